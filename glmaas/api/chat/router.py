"""Routes: `POST /v1/chat/completions` (OpenAI) and `POST /api/paas/v4/chat/completions` (Zhipu)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from glmaas.api.chat.protocol import ChatCompletionRequest, to_canonical
from glmaas.api.chat.serving import ChatRun, complete, rate_limit_headers, start_chat, stream
from glmaas.api.errors import ZHIPU_PREFIX, Dialect
from glmaas.api.requests import app_state, authenticate, new_request_id, parse_body


async def chat_completions(request: Request) -> Response:
    arrived = time.monotonic()
    dialect = Dialect.of_path(request.url.path)
    principal = authenticate(request)
    body = await parse_body(request, ChatCompletionRequest)
    # Zhipu always reports usage on the last chunk; OpenAI only when asked.
    chat = to_canonical(body, always_usage=dialect is Dialect.ZHIPU)
    request_id = chat.request_id or new_request_id()
    request.state.request_id = request_id
    run = start_chat(app_state(request), principal, chat, request_id, arrived)
    headers = {"x-request-id": request_id, **rate_limit_headers(run)}
    if chat.stream:
        return MeteredStream(run, stream(run, dialect), headers={**headers, "cache-control": "no-cache"})
    return JSONResponse(await complete(run, dialect), headers=headers)


class MeteredStream(StreamingResponse):
    """An SSE response that settles its request even if the body is never iterated (the client
    left before the first byte): the admission must end in a settlement either way."""

    def __init__(self, run: ChatRun, content: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.settle_if_open("aborted")


# Plain Starlette routes: the request path needs none of FastAPI's dependency machinery, and on the
# hottest route its cost shows.
routes = [Route(path, chat_completions, methods=["POST"])
          for path in ("/v1/chat/completions", f"{ZHIPU_PREFIX}/chat/completions")]
