"""Errors on the wire: every error a client can see is an `ApiError` of a known `ErrorKind`.

`ERROR_KINDS` gives each kind its HTTP status and whether a retry can help (the
`x-should-retry` header; the Zhipu SDKs otherwise retry every 429). How a kind is spelled on the
wire (Zhipu business codes, OpenAI types) is each dialect's business: `api/dialects/`.
Refusals of the platform map onto kinds through `REFUSALS`, one row per `Refusal`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from glmaas.platform.errors import PlatformError, RateLimited, Refusal


class ErrorKind(enum.StrEnum):
    AUTH_MISSING = "auth_missing"
    AUTH_MALFORMED = "auth_malformed"
    AUTH_EXPIRED = "auth_expired"
    AUTH_INVALID = "auth_invalid"
    INVALID_REQUEST = "invalid_request"
    MISSING_FIELD = "missing_field"
    INVALID_JSON = "invalid_json"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    PROMPT_TOO_LONG = "prompt_too_long"
    BODY_TOO_LARGE = "body_too_large"
    ROUTE_NOT_FOUND = "route_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    BUDGET_EXCEEDED = "budget_exceeded"
    CONCURRENCY_LIMITED = "concurrency_limited"
    RATE_LIMITED = "rate_limited"
    TOKEN_RATE_LIMITED = "token_rate_limited"
    DUPLICATE_REQUEST = "duplicate_request"
    ADMIN_AUTH = "admin_auth"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    ENGINE_ERROR = "engine_error"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL = "internal"
    SHUTTING_DOWN = "shutting_down"


@dataclass(frozen=True)
class KindOnWire:
    status: int
    retry: bool | None = None  # the x-should-retry header; None sends none


ERROR_KINDS: dict[ErrorKind, KindOnWire] = {
    ErrorKind.AUTH_MISSING: KindOnWire(401, False),
    ErrorKind.AUTH_MALFORMED: KindOnWire(401, False),
    ErrorKind.AUTH_EXPIRED: KindOnWire(401, False),
    ErrorKind.AUTH_INVALID: KindOnWire(401, False),
    ErrorKind.INVALID_REQUEST: KindOnWire(400, False),
    ErrorKind.MISSING_FIELD: KindOnWire(400, False),
    ErrorKind.INVALID_JSON: KindOnWire(400, False),
    ErrorKind.MODEL_NOT_FOUND: KindOnWire(404, False),
    ErrorKind.MODEL_NOT_ALLOWED: KindOnWire(403, False),
    ErrorKind.PROMPT_TOO_LONG: KindOnWire(400, False),
    ErrorKind.BODY_TOO_LARGE: KindOnWire(413, False),
    ErrorKind.ROUTE_NOT_FOUND: KindOnWire(404, False),
    ErrorKind.METHOD_NOT_ALLOWED: KindOnWire(405, False),
    ErrorKind.INSUFFICIENT_BALANCE: KindOnWire(429, False),
    ErrorKind.BUDGET_EXCEEDED: KindOnWire(429, False),
    ErrorKind.CONCURRENCY_LIMITED: KindOnWire(429),
    ErrorKind.RATE_LIMITED: KindOnWire(429),
    ErrorKind.TOKEN_RATE_LIMITED: KindOnWire(429),
    ErrorKind.DUPLICATE_REQUEST: KindOnWire(400, False),
    ErrorKind.ADMIN_AUTH: KindOnWire(401, False),
    ErrorKind.NOT_FOUND: KindOnWire(404, False),
    ErrorKind.CONFLICT: KindOnWire(409, False),
    ErrorKind.ENGINE_ERROR: KindOnWire(500),
    ErrorKind.MODEL_UNAVAILABLE: KindOnWire(503, True),
    ErrorKind.INTERNAL: KindOnWire(500),
    ErrorKind.SHUTTING_DOWN: KindOnWire(503, True),
}


class ApiError(Exception):
    """An error to send to the client."""

    def __init__(self, kind: ErrorKind, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def wire(self) -> KindOnWire:
        return ERROR_KINDS[self.kind]


def _rate_limit_headers(exc: PlatformError) -> dict[str, str]:
    assert isinstance(exc, RateLimited)
    retry_after = max(1, math.ceil(exc.retry_after))
    # Zhipu and OpenAI SDKs retry 429s within ~7 s; past that, retrying cannot help.
    headers = {"retry-after": str(retry_after), "x-should-retry": "true" if retry_after <= 4 else "false"}
    if exc.kind is Refusal.TOKEN_RATE_LIMITED:
        headers |= {"x-ratelimit-limit-tokens": str(exc.limit), "x-ratelimit-remaining-tokens": "0"}
    elif exc.kind is Refusal.RATE_LIMITED:
        headers |= {"x-ratelimit-limit-requests": str(exc.limit), "x-ratelimit-remaining-requests": "0"}
    return headers


def _no_headers(_exc: PlatformError) -> dict[str, str]:
    return {}


# Each refusal of the platform: the kind it is on the wire, and the headers that go with it.
REFUSALS: dict[Refusal, tuple[ErrorKind, Callable[[PlatformError], dict[str, str]]]] = {
    Refusal.AUTH_MISSING: (ErrorKind.AUTH_MISSING, _no_headers),
    Refusal.AUTH_MALFORMED: (ErrorKind.AUTH_MALFORMED, _no_headers),
    Refusal.AUTH_EXPIRED: (ErrorKind.AUTH_EXPIRED, _no_headers),
    Refusal.AUTH_INVALID: (ErrorKind.AUTH_INVALID, _no_headers),
    Refusal.MODEL_NOT_ALLOWED: (ErrorKind.MODEL_NOT_ALLOWED, _no_headers),
    Refusal.INSUFFICIENT_BALANCE: (ErrorKind.INSUFFICIENT_BALANCE, _no_headers),
    Refusal.BUDGET_EXCEEDED: (ErrorKind.BUDGET_EXCEEDED, _no_headers),
    Refusal.RATE_LIMITED: (ErrorKind.RATE_LIMITED, _rate_limit_headers),
    Refusal.TOKEN_RATE_LIMITED: (ErrorKind.TOKEN_RATE_LIMITED, _rate_limit_headers),
    Refusal.CONCURRENCY_LIMITED: (ErrorKind.CONCURRENCY_LIMITED, _rate_limit_headers),
    Refusal.DUPLICATE_REQUEST: (ErrorKind.DUPLICATE_REQUEST, _no_headers),
    Refusal.NOT_FOUND: (ErrorKind.NOT_FOUND, _no_headers),
    Refusal.CONFLICT: (ErrorKind.CONFLICT, _no_headers),
    Refusal.INVALID: (ErrorKind.INVALID_REQUEST, _no_headers),
}


def from_platform(exc: PlatformError) -> ApiError:
    """The wire error for a refusal of the platform's."""
    kind, headers = REFUSALS[exc.kind]
    return ApiError(kind, str(exc), headers=headers(exc))
