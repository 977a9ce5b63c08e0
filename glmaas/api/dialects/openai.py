"""The OpenAI dialect (`/v1`): errors as `{"error": {"message", "type", "param", "code"}}`,
completion ids `chatcmpl-…`, usage in a stream only when `stream_options.include_usage` asks, and
then in a last chunk of its own with `"choices": []`; the role only on a stream's first delta; a
streamed tool call as its id and name, then its arguments."""

from __future__ import annotations

from collections.abc import Callable

from glmaas.api.dialects.base import Dialect
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.sse import sse_event

# Kind → (type, code), as OpenAI names them.
TYPES: dict[ErrorKind, tuple[str, str | None]] = {
    ErrorKind.AUTH_MISSING: ("invalid_request_error", "missing_api_key"),
    ErrorKind.AUTH_MALFORMED: ("invalid_request_error", "invalid_api_key"),
    ErrorKind.AUTH_EXPIRED: ("invalid_request_error", "expired_api_key"),
    ErrorKind.AUTH_INVALID: ("invalid_request_error", "invalid_api_key"),
    ErrorKind.INVALID_REQUEST: ("invalid_request_error", "invalid_value"),
    ErrorKind.MISSING_FIELD: ("invalid_request_error", "missing_required_parameter"),
    ErrorKind.INVALID_JSON: ("invalid_request_error", "invalid_json"),
    ErrorKind.MODEL_NOT_FOUND: ("invalid_request_error", "model_not_found"),
    ErrorKind.MODEL_NOT_ALLOWED: ("permission_error", "model_not_allowed"),
    ErrorKind.PROMPT_TOO_LONG: ("invalid_request_error", "context_length_exceeded"),
    ErrorKind.BODY_TOO_LARGE: ("invalid_request_error", "request_too_large"),
    ErrorKind.ROUTE_NOT_FOUND: ("invalid_request_error", "not_found"),
    ErrorKind.METHOD_NOT_ALLOWED: ("invalid_request_error", "method_not_allowed"),
    ErrorKind.INSUFFICIENT_BALANCE: ("insufficient_quota", "insufficient_quota"),
    ErrorKind.BUDGET_EXCEEDED: ("insufficient_quota", "budget_exceeded"),
    ErrorKind.CONCURRENCY_LIMITED: ("requests", "rate_limit_exceeded"),
    ErrorKind.RATE_LIMITED: ("requests", "rate_limit_exceeded"),
    ErrorKind.TOKEN_RATE_LIMITED: ("tokens", "rate_limit_exceeded"),
    ErrorKind.DUPLICATE_REQUEST: ("invalid_request_error", "duplicate_request_id"),
    ErrorKind.ADMIN_AUTH: ("invalid_request_error", "invalid_admin_token"),
    ErrorKind.NOT_FOUND: ("invalid_request_error", "not_found"),
    ErrorKind.CONFLICT: ("invalid_request_error", "conflict"),
    ErrorKind.ENGINE_ERROR: ("server_error", "engine_error"),
    ErrorKind.MODEL_UNAVAILABLE: ("server_error", "model_unavailable"),
    ErrorKind.INTERNAL: ("server_error", None),
    ErrorKind.SHUTTING_DOWN: ("server_error", "service_unavailable"),
}


class OpenAIDialect(Dialect):
    name = "openai"
    prefix = "/v1"
    always_usage = False
    usage_in_own_chunk = True
    role_on_every_delta = False
    tool_call_whole = False

    def status(self, error: ApiError) -> int:
        return error.wire.status

    def error_body(self, error: ApiError) -> dict:
        error_type, code = TYPES[error.kind]
        return {"error": {"message": error.message, "type": error_type, "param": error.param, "code": code}}

    def completion_id(self, request_id: str) -> str:
        return f"chatcmpl-{request_id}"

    def stream_fault(self, error: ApiError, finish_chunk: Callable[[str], bytes]) -> bytes:
        # An error event: the OpenAI SDK raises it as APIError.
        return sse_event(self.error_body(error))


OPENAI = OpenAIDialect()
