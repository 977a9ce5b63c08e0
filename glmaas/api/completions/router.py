"""Route: `POST /v1/completions`, OpenAI's legacy completions. The Zhipu API has no such
resource, so it is served in the OpenAI dialect only."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.chat.serving import first_delta_ahead
from glmaas.api.completions.protocol import Completion, CompletionRequest, to_canonical
from glmaas.api.completions.serving import build_prompts, complete, generate, stream
from glmaas.api.dialects import OPENAI
from glmaas.api.metered import MeteredStream, admit
from glmaas.api.openapi import BodyRoute
from glmaas.api.requests import JSONModelResponse, app_state, authenticate, parse_body, take_request_id


async def completions(request: Request) -> Response:
    """parse → authenticate → build prompt → admit → generate → settle → serialize."""
    arrived = time.monotonic()
    state = app_state(request)
    principal = authenticate(request)
    req = to_canonical(await parse_body(request, CompletionRequest))
    request_id = take_request_id(request, req.request_id)
    prompts = build_prompts(state, req, principal.account_id)
    run = await admit(state, principal, req.model, request_id, prompt_tokens=sum(p.prompt_tokens for p in prompts),
                      max_tokens=sum(p.max_tokens for p in prompts), arrived=arrived, stream=req.stream,
                      end_user=req.user)
    # The run settles when its deltas end, however they end.
    deltas = run.generate(generate(req, prompts, request_id))
    headers = {"x-request-id": request_id, **run.rate_limit_headers()}
    if req.stream:
        # An engine that refuses the prompt (too long for its blanks) still answers with an HTTP error.
        deltas = await first_delta_ahead(deltas)
        return MeteredStream(run, stream(run, deltas, req, prompts), headers)
    return JSONModelResponse(await complete(run, deltas, req, prompts), headers=headers)


routes = [Route(OPENAI.path("/completions"), completions, methods=["POST"])]
body_routes = [BodyRoute(OPENAI.path("/completions"), "Create a completion (OpenAI legacy completions)",
                         CompletionRequest, Completion, streams=True)]
