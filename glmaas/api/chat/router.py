"""Routes: `POST /v1/chat/completions` (OpenAI) and `POST /api/paas/v4/chat/completions` (Zhipu)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.chat.protocol import ChatCompletion, ChatCompletionRequest, to_canonical
from glmaas.api.chat.serving import (
    build_prompt,
    complete,
    first_delta_ahead,
    generate,
    parser_of,
    stream,
)
from glmaas.api.dialects import DIALECTS, dialect_of
from glmaas.api.metered import MeteredStream, admit
from glmaas.api.openapi import BodyRoute
from glmaas.api.requests import (
    JSONModelResponse,
    app_state,
    authenticate,
    parse_body,
    take_request_id,
)


async def chat_completions(request: Request) -> Response:
    """parse → authenticate → build prompt → admit → generate → settle → serialize."""
    arrived = time.monotonic()
    dialect = dialect_of(request.scope["path"])
    state = app_state(request)
    principal = authenticate(request)
    chat = to_canonical(await parse_body(request, ChatCompletionRequest))
    request_id = take_request_id(request, chat.request_id)
    prompt = build_prompt(state, chat, principal.account_id)
    run = await admit(state, principal, chat.model, request_id, prompt_tokens=prompt.prompt_tokens,
                      max_tokens=prompt.max_tokens, arrived=arrived, stream=chat.stream, end_user=chat.user)
    # The run settles when its deltas end, however they end.
    deltas = run.generate(generate(chat, prompt, request_id, principal.account_id))
    parser = parser_of(chat, prompt)
    headers = {"x-request-id": request_id, **run.rate_limit_headers()}
    if chat.stream:
        if prompt.asks_in_messages:  # an upstream: it may still refuse before its first output
            deltas = await first_delta_ahead(deltas)
        return MeteredStream(run, stream(run, deltas, chat, parser, dialect), headers)
    return JSONModelResponse(await complete(run, deltas, chat, parser, dialect), headers=headers)


# Plain Starlette routes: the request path needs none of FastAPI's dependency machinery, and on the
# hottest route its cost shows.
routes = [Route(dialect.path("/chat/completions"), chat_completions, methods=["POST"]) for dialect in DIALECTS]
# As /openapi.json shows them.
body_routes = [BodyRoute(dialect.path("/chat/completions"), f"Create a chat completion ({dialect.name} dialect)",
                         ChatCompletionRequest, ChatCompletion, streams=True) for dialect in DIALECTS]
