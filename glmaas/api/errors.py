"""Errors on the wire, in each dialect's own shape.

Every error a client can see is an `ApiError` of a known `kind`; `ERROR_KINDS` maps each kind to
its HTTP status, Zhipu business code (zhipu-api.md §3) and OpenAI type/code. Zhipu errors that
retrying cannot fix carry `x-should-retry: false`, since the Zhipu SDKs otherwise retry every 429.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse

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
    if kind.retry is not None and dialect is Dialect.ZHIPU:
        headers["x-should-retry"] = "true" if kind.retry else "false"
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(error_body(error, dialect), status_code=kind.status_in(dialect), headers=headers)


def response_for(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error, Dialect.of_path(request.url.path),
                          getattr(request.state, "request_id", None))
