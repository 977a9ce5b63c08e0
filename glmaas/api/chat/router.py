"""Routes: `POST /v1/chat/completions` (OpenAI) and `POST /api/paas/v4/chat/completions` (Zhipu)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from glmaas.api.chat.protocol import ChatCompletionRequest, to_canonical
from glmaas.api.chat.serving import complete, rate_limit_headers, start_chat, stream
from glmaas.api.errors import ZHIPU_PREFIX, Dialect
from glmaas.api.requests import app_state, authenticate, new_request_id, parse_body

router = APIRouter()


@router.post("/v1/chat/completions")
@router.post(f"{ZHIPU_PREFIX}/chat/completions")
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
        return StreamingResponse(
            stream(run, dialect),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    return JSONResponse(await complete(run, dialect), headers=headers)
