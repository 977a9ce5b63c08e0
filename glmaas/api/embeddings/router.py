"""Routes: `POST /v1/embeddings` (OpenAI) and `POST /api/paas/v4/embeddings` (Zhipu)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.dialects import DIALECTS
from glmaas.api.embeddings.protocol import EmbeddingRequest, EmbeddingResponse
from glmaas.api.embeddings.serving import embed, prepare, respond
from glmaas.api.metered import admit
from glmaas.api.openapi import BodyRoute
from glmaas.api.requests import (
    JSONModelResponse,
    app_state,
    authenticate,
    parse_body,
    take_request_id,
)


async def embeddings(request: Request) -> Response:
    """parse → authenticate → tokenize → admit → embed → settle → serialize."""
    arrived = time.monotonic()
    state = app_state(request)
    principal = authenticate(request)
    req = await parse_body(request, EmbeddingRequest)
    request_id = take_request_id(request, req.request_id)
    inputs = prepare(state, req)
    # An embedding sells its input only: nothing is generated, so nothing more is held.
    run = await admit(state, principal, req.model, request_id, prompt_tokens=inputs.prompt_tokens,
                      max_tokens=0, arrived=arrived, stream=False, end_user=req.user)
    vectors = await embed(run, inputs)
    headers = {"x-request-id": request_id, **run.rate_limit_headers()}
    return JSONModelResponse(respond(req, inputs, vectors), headers=headers)


routes = [Route(dialect.path("/embeddings"), embeddings, methods=["POST"]) for dialect in DIALECTS]
# As /openapi.json shows them.
body_routes = [BodyRoute(dialect.path("/embeddings"), f"Create embeddings ({dialect.name} dialect)",
                         EmbeddingRequest, EmbeddingResponse) for dialect in DIALECTS]
