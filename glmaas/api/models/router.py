"""Routes: `GET /v1/models` and `GET /api/paas/v4/models` (OpenAI list shape in both)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from glmaas.api.dialects import OPENAI, ZHIPU
from glmaas.api.requests import app_state, authenticate

router = APIRouter()


@router.get(OPENAI.path("/models"))
@router.get(ZHIPU.path("/models"))
async def list_models(request: Request) -> dict:
    principal = authenticate(request)
    state = app_state(request)
    started = int(state.started_at)
    data = [
        {"id": info.model_id, "object": "model", "created": started, "owned_by": info.owned_by}
        for info in state.registry.models()
        if principal.may_use(info.model_id)
    ]
    return {"object": "list", "data": data}
