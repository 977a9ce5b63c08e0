"""Authenticating a request from its `Authorization` header.

Accepted, per the Zhipu SDKs (reference zhipu-api.md §1.7): `Bearer <id>.<secret>`, a bare
`<id>.<secret>`, and `Bearer <JWT>` or a bare JWT signed HS256 with the key's secret, carrying
`api_key` (the key id) and `exp` in milliseconds (seconds accepted, told apart by magnitude).

Whatever the header holds, the result is a `Principal` or an `AuthError` (HTTP 401): a credential
is a token68 string (RFC 6750) of bounded length, a key id is a short safe string, and the JWT's
`exp` and `timestamp` are finite numbers between 2000 and `JWT_MAX_AHEAD_S` from now, checked
before any arithmetic on them, so no value (NaN, 1e400, a 3000-digit integer, a boolean) can
overflow or make a token that never expires.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from sqlalchemy import Engine

from glmaas.platform.errors import AuthError
from glmaas.platform.limits import LimitSpec
from glmaas.platform.secrets import SecretBox
from glmaas.store.sql import KEY_COLUMNS, Reader
from glmaas.store.tables import ApiKey

JWT_LEEWAY_S = 60.0
# A key row is re-read at most this often, so a revocation reaches every replica within it.
KEY_CACHE_TTL_S = 1.0
_MS_EPOCH_THRESHOLD = 10**11
# The sane range of a JWT time claim, in seconds: nothing signed before 2000-01-01 is current, and
# a token meant to outlive ten years is a key, not a token (the SDKs sign 210 s lifetimes).
JWT_EARLIEST_S = 946_684_800
JWT_MAX_AHEAD_S = 10 * 366 * 86_400
MAX_CREDENTIAL_CHARS = 4096
# RFC 6750's b64token: what a raw key (hex id, urlsafe secret) and a JWT (base64url) are made of.
_CREDENTIAL = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key and its account."""

    key_id: str
    account_id: str
    allowed_models: frozenset[str] | None
    limits: LimitSpec = LimitSpec()
    budgeted: bool = False

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


@dataclass
class _KeyRecord:
    row: ApiKey
    secret: str | None = None  # unsealed on first JWT use


class Authenticator:
    """Verifies credentials against the key table, with a short-lived cache of key rows."""

    def __init__(
        self,
        engine: Engine,
        box: SecretBox,
        *,
        cache_ttl: float = KEY_CACHE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reader = Reader(engine)
        self._box = box
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, _KeyRecord | None]] = {}

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of a request, or `AuthError`."""
        token = _credential(authorization)
        dots = token.count(".")
        if dots == 1:
            return self._raw_key(token)
        if dots == 2:
            return self._jwt(token)
        raise AuthError("malformed", "The API key or token is malformed.")

    def principal_of(self, key_id: str) -> Principal:
        """The principal of a key the platform already trusts (background work started by it),
        or `AuthError` when the key was revoked, expired or deleted since."""
        record = self._record(key_id)
        if record is None:
            raise AuthError("invalid", "The API key no longer exists.")
        return self._usable(record)

    def _raw_key(self, token: str) -> Principal:
        key_id, secret = token.split(".")
        record = self._record(key_id)
        # Hash even when the key is unknown, so timing does not tell which ids exist.
        digest = record.row.secret_hash if record else b"\0" * 32
        if not self._box.matches(secret, digest) or record is None:
            raise AuthError("invalid", "The API key is invalid.")
        return self._usable(record)

    def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, RecursionError):
            # RecursionError: a header or payload nested past the JSON decoder's depth.
            raise AuthError("malformed", "The token is malformed.") from None
        key_id = claims.get("api_key")
        if header.get("alg") != "HS256" or not isinstance(key_id, str):
            raise AuthError("malformed", "The token must be HS256 and carry api_key.")
        if not _KEY_ID.fullmatch(key_id):
            raise AuthError("invalid", "The token's API key is invalid.")
        now = self._clock()
        exp_s = _claim_time_s(claims.get("exp"), "exp", now)
        if "timestamp" in claims:  # the SDKs' signing time; optional
            _claim_time_s(claims["timestamp"], "timestamp", now)
        record = self._record(key_id)
        if record is None:
            raise AuthError("invalid", "The token's API key is invalid.")
        if record.secret is None:
            record.secret = self._box.open(record.row.secret_sealed, key_id=key_id)
        try:
            # The signature only: exp is in milliseconds, which PyJWT would read as seconds, and
            # the claims were checked above.
            jwt.api_jws.decode(token, record.secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            raise AuthError("invalid", "The token's signature does not verify.") from None
        if now > exp_s + JWT_LEEWAY_S:
            raise AuthError("expired", "The token has expired.")
        return self._usable(record)

    def _usable(self, record: _KeyRecord) -> Principal:
        row = record.row
        now = self._clock()
        if row.revoked_at is not None:
            raise AuthError("invalid", "The API key has been revoked.")
        if row.expires_at is not None and now >= row.expires_at:
            raise AuthError("expired", "The API key has expired.")
        models = frozenset(row.allowed_models.split(",")) if row.allowed_models else None
        return Principal(row.id, row.account_id, models, LimitSpec(row.rpm, row.tpm, row.concurrency),
                         row.budget is not None)

    def _record(self, key_id: str) -> _KeyRecord | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        found = self._reader.row("key_row", key_id=key_id) if len(key_id) <= 64 else None
        row = None if found is None else ApiKey(**dict(zip(KEY_COLUMNS, found, strict=True)))
        old = hit[1] if hit else None
        record = None
        if row is not None:
            # Keep an unsealed secret across refreshes unless the key changed.
            keep = old.secret if old and old.row.secret_sealed == row.secret_sealed else None
            record = _KeyRecord(row, keep)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record


def _credential(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise AuthError("missing", "No API key was given in the Authorization header.")
    value = strip_bearer(authorization)
    # Checked before the value reaches a database lookup or a log: no control characters, no
    # non-ASCII, nothing a driver could refuse with its own exception.
    if len(value) > MAX_CREDENTIAL_CHARS or not _CREDENTIAL.fullmatch(value):
        raise AuthError("malformed", "The API key or token is malformed.")
    return value


def _claim_time_s(value: object, name: str, now: float) -> float:
    """The JWT time claim `name` in seconds (milliseconds told apart by magnitude), or `AuthError`
    unless it is a finite number between `JWT_EARLIEST_S` and `JWT_MAX_AHEAD_S` from `now`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("malformed", f"The token's {name} must be a number.")
    if isinstance(value, float) and not math.isfinite(value):
        raise AuthError("malformed", f"The token's {name} must be a finite number.")
    latest_s = now + JWT_MAX_AHEAD_S
    # Compared as they are (int and float compare exactly, whatever their size) before dividing:
    # a huge integer divided by 1000 would overflow a float.
    in_ms = value >= _MS_EPOCH_THRESHOLD
    earliest, latest = (JWT_EARLIEST_S * 1000, latest_s * 1000) if in_ms else (JWT_EARLIEST_S, latest_s)
    if not earliest <= value <= latest:
        raise AuthError("malformed", f"The token's {name} is not a time between 2000 and "
                                     f"{JWT_MAX_AHEAD_S // (366 * 86_400)} years from now.")
    return value / 1000 if in_ms else float(value)


def strip_bearer(authorization: str) -> str:
    """The credential of an `Authorization` header, with or without its `Bearer ` scheme."""
    value = authorization.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value
