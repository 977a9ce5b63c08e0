"""Who may do what in the console: every request's session is read here, every POST's CSRF token
checked here, and a page names the role it serves with `operator_of` or `tenant_of`.

A tenant's session is only as good as the key it signed in with: revoked or expired, the session
ends. An operator's ends when the admin token changes."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from glmaas.api.console.session import ConsoleSession, Role, admin_fingerprint, read_session
from glmaas.api.requests import app_state
from glmaas.platform.errors import AuthError
from glmaas.platform.keys import key_view

CSRF_FIELD = "csrf"


class Denied(Exception):
    """A console request refused: shown as an HTML page with `status` (or, for `SignInRequired`
    on a GET, a redirect to the sign-in page)."""

    status = 403


class SignInRequired(Denied):
    status = 401


@dataclass(frozen=True)
class Tenant:
    """A signed-in tenant: the key they signed in with and its account."""

    key_id: str
    account_id: str
    account: str  # the account's name


def session_of(request: Request) -> ConsoleSession:
    """The session the request carries, still valid; an anonymous one otherwise."""
    if hasattr(request.state, "console"):
        return request.state.console
    state = app_state(request)
    session = read_session(request, state.box)
    if session is None or not _still_valid(request, session):
        session = ConsoleSession.anonymous()
        request.state.fresh_session = True  # the response sets it as the cookie
    request.state.console = session
    return session


def _still_valid(request: Request, session: ConsoleSession) -> bool:
    state = app_state(request)
    if session.role is Role.OPERATOR:
        return session.admin_fingerprint == admin_fingerprint(state.box, state.admin_token)
    if session.role is Role.TENANT:
        try:
            principal = state.authenticator.principal_of(session.key_id)
        except AuthError:
            return False
        return principal.account_id == session.account_id
    return True


async def check_csrf(request: Request) -> None:
    """Every route's first step: a POST must carry the session's CSRF token in its form."""
    session = session_of(request)
    if request.method != "POST":
        return
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not session.csrf_matches(token):
        raise Denied("This form has expired or did not come from this console. Reload the page and try again.")


def operator_of(request: Request) -> ConsoleSession:
    """The operator's session; `Denied` for anyone else."""
    session = session_of(request)
    if session.role is Role.ANONYMOUS:
        raise SignInRequired("Sign in to see this page.")
    if session.role is not Role.OPERATOR:
        raise Denied("This page is for operators.")
    return session


def tenant_of(request: Request) -> Tenant:
    """The signed-in tenant; `Denied` for anyone else."""
    session = session_of(request)
    if session.role is Role.ANONYMOUS:
        raise SignInRequired("Sign in to see this page.")
    if session.role is not Role.TENANT:
        raise Denied("This page is for tenants: an operator sees every account under Accounts.")
    state = app_state(request)
    with state.db.session() as db:
        account = key_view(db, session.key_id).account
    return Tenant(session.key_id, session.account_id, account)
