"""What a wire dialect is: the parts of the protocol that differ between the OpenAI API and the
Zhipu BigModel v4 API. Everything else (request schemas, the metered run, the engines) is shared,
and nothing outside `api/dialects/` branches on which dialect a request speaks."""

from __future__ import annotations

import abc
from collections.abc import Callable

from starlette.responses import JSONResponse

from glmaas.api.errors import ApiError


class Dialect(abc.ABC):
    """One wire dialect: its path prefix, error shapes, ids and stream conventions."""

    name: str
    prefix: str
    # Whether a stream reports usage at its end even when the client did not ask.
    always_usage: bool
    # Whether usage comes in a chunk of its own with no choices (after the finish chunk), or on
    # the finish chunk itself.
    usage_in_own_chunk: bool
    # Whether every stream delta says `"role": "assistant"`, or only the first.
    role_on_every_delta: bool
    # Whether a streamed tool call comes whole in one delta, or as its id and name followed by its
    # arguments (what `tool_stream` asks of the Zhipu dialect).
    tool_call_whole: bool

    def path(self, resource: str) -> str:
        """The route of `resource` (e.g. "/chat/completions") in this dialect."""
        return self.prefix + resource

    @abc.abstractmethod
    def status(self, error: ApiError) -> int:
        """The HTTP status this dialect answers `error` with."""

    @abc.abstractmethod
    def error_body(self, error: ApiError) -> dict:
        """The JSON body of `error`."""

    @abc.abstractmethod
    def completion_id(self, request_id: str) -> str:
        """The `id` of a chat completion (and of each of its chunks)."""

    @abc.abstractmethod
    def stream_fault(self, error: ApiError, finish_chunk: Callable[[str], bytes]) -> bytes:
        """The SSE event that ends a stream whose generation failed after the headers went out.
        `finish_chunk(reason)` builds the stream's last chunk with that finish reason and usage."""

    def error_response(self, error: ApiError, request_id: str | None = None) -> JSONResponse:
        headers = dict(error.headers)
        retry = error.wire.retry
        if retry is not None and "x-should-retry" not in headers:
            headers["x-should-retry"] = "true" if retry else "false"
        if request_id:
            headers["x-request-id"] = request_id
        return JSONResponse(self.error_body(error), status_code=self.status(error), headers=headers)
