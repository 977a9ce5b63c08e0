"""The Zhipu BigModel v4 dialect (`/api/paas/v4`, reference zhipu-api.md §3): errors as
`{"error": {"code": "<digits>", "message"}}` with the platform's statuses, completion ids equal
to the request id, usage always on a stream's last chunk, `"role": "assistant"` on every delta, a
streamed tool call whole in one delta (unless `tool_stream`), and a fault mid-stream (the
engine's, a timeout, or the server's own) told as the platform tells an inference failure: a last
chunk with `finish_reason: network_error` and the usage so far, then `[DONE]`; no error event,
which the Zhipu SDKs would raise without the usage."""

from __future__ import annotations

from collections.abc import Callable

from glmaas.api.dialects.base import Dialect
from glmaas.api.errors import ApiError, ErrorKind

# Kind → the platform's business code (a digit string).
CODES: dict[ErrorKind, str] = {
    ErrorKind.AUTH_MISSING: "1001",
    ErrorKind.AUTH_MALFORMED: "1002",
    ErrorKind.AUTH_EXPIRED: "1003",
    ErrorKind.AUTH_INVALID: "1000",
    ErrorKind.INVALID_REQUEST: "1214",
    ErrorKind.MISSING_FIELD: "1213",
    ErrorKind.INVALID_JSON: "1210",
    ErrorKind.MODEL_NOT_FOUND: "1211",
    ErrorKind.MODEL_NOT_ALLOWED: "1220",
    ErrorKind.PROMPT_TOO_LONG: "1261",
    ErrorKind.BODY_TOO_LARGE: "1210",
    ErrorKind.ROUTE_NOT_FOUND: "1222",
    ErrorKind.METHOD_NOT_ALLOWED: "1222",
    ErrorKind.INSUFFICIENT_BALANCE: "1113",
    ErrorKind.BUDGET_EXCEEDED: "1113",
    ErrorKind.CONCURRENCY_LIMITED: "1302",
    ErrorKind.RATE_LIMITED: "1303",
    ErrorKind.TOKEN_RATE_LIMITED: "1303",
    ErrorKind.DUPLICATE_REQUEST: "1231",
    ErrorKind.ADMIN_AUTH: "1000",
    ErrorKind.NOT_FOUND: "1222",
    ErrorKind.CONFLICT: "1214",
    ErrorKind.ENGINE_ERROR: "1234",
    ErrorKind.MODEL_UNAVAILABLE: "1305",  # "model overloaded, retry later"
    ErrorKind.INTERNAL: "500",
    ErrorKind.SHUTTING_DOWN: "1305",  # "model overloaded, retry later"; the SDKs retry a 503
}

# Where the Zhipu platform answers with another status than OpenAI's.
STATUSES: dict[ErrorKind, int] = {ErrorKind.MODEL_NOT_FOUND: 400}


class ZhipuDialect(Dialect):
    name = "zhipu"
    prefix = "/api/paas/v4"
    always_usage = True
    usage_in_own_chunk = False
    role_on_every_delta = True
    tool_call_whole = True

    def status(self, error: ApiError) -> int:
        return STATUSES.get(error.kind, error.wire.status)

    def error_body(self, error: ApiError) -> dict:
        return {"error": {"code": CODES[error.kind], "message": error.message}}

    def completion_id(self, request_id: str) -> str:
        return request_id

    def stream_fault(self, error: ApiError, finish_chunk: Callable[[str], bytes]) -> bytes:
        return finish_chunk("network_error")


ZHIPU = ZhipuDialect()
