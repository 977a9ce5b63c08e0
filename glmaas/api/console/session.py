"""The console's session: who is signed in, sealed into an HttpOnly cookie.

The cookie holds a `ConsoleSession` encrypted and authenticated with the deployment's secret box
(`platform/secrets.py`), so the browser can neither read nor forge it; it never holds the admin
token or an API key. An operator's session carries a fingerprint of the admin token (a new token
signs every operator out); a tenant's carries the id of the key it signed in with, which must
still be usable on every request (revoking the key signs the tenant out). Every session, signed in
or not, carries the CSRF token its forms must send back.
"""

from __future__ import annotations

import enum
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass, replace

from starlette.requests import Request
from starlette.responses import Response

from glmaas.platform.secrets import SecretBox

COOKIE = "glmaas_console"
COOKIE_PATH = "/console"
PURPOSE = "console session v1"
SESSION_TTL_S = 8 * 3600


class Role(enum.StrEnum):
    ANONYMOUS = "anonymous"
    OPERATOR = "operator"
    TENANT = "tenant"


@dataclass(frozen=True)
class ConsoleSession:
    role: Role
    csrf: str
    expires_at: float
    account_id: str = ""  # a tenant's account
    key_id: str = ""  # the key a tenant signed in with
    admin_fingerprint: str = ""  # an operator's: of the admin token they signed in with

    @classmethod
    def anonymous(cls) -> ConsoleSession:
        return cls(Role.ANONYMOUS, secrets.token_urlsafe(24), time.time() + SESSION_TTL_S)

    def signed_in(self, role: Role, **who: str) -> ConsoleSession:
        """A new session for whoever just signed in, with a new CSRF token (so one fixed before
        sign-in is worth nothing after)."""
        return replace(ConsoleSession.anonymous(), role=role, **who)

    def csrf_matches(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf.encode())


def admin_fingerprint(box: SecretBox, admin_token: str) -> str:
    """Ties an operator session to the admin token of the moment, without holding the token."""
    return box.digest("console operator " + admin_token).hex()[:32]


def read_session(request: Request, box: SecretBox) -> ConsoleSession | None:
    """The request's session, or None when it has none, or one that is forged or expired."""
    cookie = request.cookies.get(COOKIE)
    data = box.open_state(cookie, purpose=PURPOSE) if cookie else None
    if data is None:
        return None
    try:
        fields = json.loads(data)
        session = ConsoleSession(**{**fields, "role": Role(fields["role"])})
    except (ValueError, TypeError, KeyError):
        return None
    return session if session.expires_at > time.time() else None


def write_session(response: Response, request: Request, box: SecretBox, session: ConsoleSession) -> None:
    sealed = box.seal_state(json.dumps(asdict(session)).encode(), purpose=PURPOSE)
    response.set_cookie(COOKIE, sealed, max_age=int(session.expires_at - time.time()), path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
