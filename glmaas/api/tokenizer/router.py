"""Route: `POST /api/paas/v4/tokenizer` (Zhipu): how many prompt tokens `messages` (and
`tools`) make for a model, rendered exactly as a chat completion would render them.

It sells nothing, yet it is metered like every other model call: admitted (limits apply, the
key must be allowed the model) and settled at zero tokens, so it shows in usage at no cost.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.chat.protocol import ChatCompletionRequest, Message, Tool, to_canonical
from glmaas.api.chat.serving import render_prompt
from glmaas.api.dialects import ZHIPU
from glmaas.api.metered import admit
from glmaas.api.openapi import BodyRoute
from glmaas.api.requests import (
    JSONModelResponse,
    RequestId,
    app_state,
    authenticate,
    parse_body,
    take_request_id,
)


class TokenizerRequest(BaseModel):
    model: str = Field(min_length=1, max_length=128)
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    request_id: RequestId | None = None


class TokenizerUsage(BaseModel):
    prompt_tokens: int


class TokenizerResponse(BaseModel):
    id: str
    request_id: str
    created: int
    model: str
    usage: TokenizerUsage


async def _counted(token_ids: tuple[int, ...]) -> int:
    return len(token_ids)


async def tokenize(request: Request) -> Response:
    arrived = time.monotonic()
    state = app_state(request)
    principal = authenticate(request)
    body = await parse_body(request, TokenizerRequest)
    request_id = take_request_id(request, body.request_id)
    chat = to_canonical(ChatCompletionRequest(model=body.model, messages=body.messages, tools=body.tools))
    # Counted before admission: messages the template refuses are a 400 that holds nothing.
    _, _, token_ids = render_prompt(state, chat, principal.account_id)
    run = await admit(state, principal, body.model, request_id, prompt_tokens=0, max_tokens=0, arrived=arrived,
                      stream=False)
    prompt_tokens = await run.compute(_counted(token_ids))
    answer = TokenizerResponse(id=request_id, request_id=request_id, created=run.created, model=body.model,
                               usage=TokenizerUsage(prompt_tokens=prompt_tokens))
    return JSONModelResponse(answer, headers={"x-request-id": request_id})


routes = [Route(ZHIPU.path("/tokenizer"), tokenize, methods=["POST"])]
# As /openapi.json shows it.
body_routes = [BodyRoute(ZHIPU.path("/tokenizer"), "Count the prompt tokens of messages (zhipu dialect)",
                         TokenizerRequest, TokenizerResponse)]
