"""Errors on the wire, in each dialect's own shape.

Every error a client can see is an `ApiError` of a known `kind`; `ERROR_KINDS` maps each kind to
its HTTP status, Zhipu business code (zhipu-api.md §3) and OpenAI type/code. Zhipu errors that
retrying cannot fix carry `x-should-retry: false`, since the Zhipu SDKs otherwise retry every 429.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse

from glmaas.platform.errors import (
    Conflict,
    DuplicateRequest,
    ModelNotAllowed,
    NotFound,
    PlatformError,
)
from glmaas.platform.ledger import BudgetExceeded, InsufficientBalance
from glmaas.platform.limits import RateLimited

ZHIPU_PREFIX = "/api/paas/v4"


class Dialect(enum.Enum):
    OPENAI = "openai"
    ZHIPU = "zhipu"

    @classmethod
    def of_path(cls, path: str) -> Dialect:
        return cls.ZHIPU if path.lstrip("/").startswith(ZHIPU_PREFIX.lstrip("/")) else cls.OPENAI


@dataclass(frozen=True)
class ErrorKind:
    status: int
    zhipu_code: str
    openai_type: str
    openai_code: str | None
    retry: bool | None = None  # the x-should-retry header; None sends none
    zhipu_status: int | None = None  # where the Zhipu platform answers with another status

    def status_in(self, dialect: Dialect) -> int:
        if dialect is Dialect.ZHIPU and self.zhipu_status is not None:
            return self.zhipu_status
        return self.status


ERROR_KINDS: dict[str, ErrorKind] = {
    "auth_missing": ErrorKind(401, "1001", "invalid_request_error", "missing_api_key", False),
    "auth_malformed": ErrorKind(401, "1002", "invalid_request_error", "invalid_api_key", False),
    "auth_expired": ErrorKind(401, "1003", "invalid_request_error", "expired_api_key", False),
    "auth_invalid": ErrorKind(401, "1000", "invalid_request_error", "invalid_api_key", False),
    "invalid_request": ErrorKind(400, "1214", "invalid_request_error", "invalid_value", False),
    "missing_field": ErrorKind(400, "1213", "invalid_request_error", "missing_required_parameter", False),
    "invalid_json": ErrorKind(400, "1210", "invalid_request_error", "invalid_json", False),
    "model_not_found": ErrorKind(
        404, "1211", "invalid_request_error", "model_not_found", False, zhipu_status=400
    ),
    "model_not_allowed": ErrorKind(403, "1220", "permission_error", "model_not_allowed", False),
    "prompt_too_long": ErrorKind(400, "1261", "invalid_request_error", "context_length_exceeded", False),
    "body_too_large": ErrorKind(413, "1210", "invalid_request_error", "request_too_large", False),
    "route_not_found": ErrorKind(404, "1222", "invalid_request_error", "not_found", False),
    "method_not_allowed": ErrorKind(405, "1222", "invalid_request_error", "method_not_allowed", False),
    "insufficient_balance": ErrorKind(429, "1113", "insufficient_quota", "insufficient_quota", False),
    "budget_exceeded": ErrorKind(429, "1113", "insufficient_quota", "budget_exceeded", False),
    "concurrency_limited": ErrorKind(429, "1302", "requests", "rate_limit_exceeded"),
    "rate_limited": ErrorKind(429, "1303", "requests", "rate_limit_exceeded"),
    "token_rate_limited": ErrorKind(429, "1303", "tokens", "rate_limit_exceeded"),
    "duplicate_request": ErrorKind(400, "1231", "invalid_request_error", "duplicate_request_id", False),
    "admin_auth": ErrorKind(401, "1000", "invalid_request_error", "invalid_admin_token", False),
    "not_found": ErrorKind(404, "1222", "invalid_request_error", "not_found", False),
    "conflict": ErrorKind(409, "1214", "invalid_request_error", "conflict", False),
    "engine_error": ErrorKind(500, "1234", "server_error", "engine_error", None),
    "internal": ErrorKind(500, "500", "server_error", None, None),
}


class ApiError(Exception):
    """An error to send to the client."""

    def __init__(self, kind: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        self.message = message
        self.param = param
        self.headers = headers or {}


def error_body(error: ApiError, dialect: Dialect) -> dict:
    kind = ERROR_KINDS[error.kind]
    if dialect is Dialect.ZHIPU:
        return {"error": {"code": kind.zhipu_code, "message": error.message}}
    return {"error": {"message": error.message, "type": kind.openai_type,
                      "param": error.param, "code": kind.openai_code}}


def error_response(error: ApiError, dialect: Dialect, request_id: str | None = None) -> JSONResponse:
    kind = ERROR_KINDS[error.kind]
    headers = dict(error.headers)
    if kind.retry is not None and "x-should-retry" not in headers:
        headers["x-should-retry"] = "true" if kind.retry else "false"
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(error_body(error, dialect), status_code=kind.status_in(dialect), headers=headers)


def response_for(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error, Dialect.of_path(request.url.path),
                          getattr(request.state, "request_id", None))


def from_platform(exc: PlatformError) -> ApiError:
    """The wire error for a refusal of the platform's."""
    if isinstance(exc, RateLimited):
        retry_after = max(1, math.ceil(exc.retry_after))
        headers = {"retry-after": str(retry_after),
                   # Zhipu and OpenAI SDKs retry 429s within ~7 s; past that, retrying cannot help.
                   "x-should-retry": "true" if retry_after <= 4 else "false"}
        if exc.kind == "tpm":
            headers |= {"x-ratelimit-limit-tokens": str(exc.limit), "x-ratelimit-remaining-tokens": "0"}
            return ApiError("token_rate_limited", str(exc), headers=headers)
        if exc.kind == "rpm":
            headers |= {"x-ratelimit-limit-requests": str(exc.limit), "x-ratelimit-remaining-requests": "0"}
            return ApiError("rate_limited", str(exc), headers=headers)
        return ApiError("concurrency_limited", str(exc), headers=headers)
    kinds: list[tuple[type[PlatformError], str]] = [
        (InsufficientBalance, "insufficient_balance"), (BudgetExceeded, "budget_exceeded"),
        (ModelNotAllowed, "model_not_allowed"), (DuplicateRequest, "duplicate_request"),
        (NotFound, "not_found"), (Conflict, "conflict"),
    ]
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return ApiError(kind, str(exc))
    return ApiError("invalid_request", str(exc))
