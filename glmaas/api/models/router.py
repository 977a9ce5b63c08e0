"""Routes: `GET /v1/models`, `GET /api/paas/v4/models` (OpenAI list shape in both), and one
model by id under each prefix. A model the caller's key may not use does not exist for it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from glmaas.api.dialects import OPENAI, ZHIPU, Dialect
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.requests import app_state, authenticate
from glmaas.engines.base import ModelInfo

router = APIRouter()


def _model(info: ModelInfo, created: int) -> dict:
    return {"id": info.model_id, "object": "model", "created": created, "owned_by": info.owned_by}


@router.get(OPENAI.path("/models"))
@router.get(ZHIPU.path("/models"))
async def list_models(request: Request) -> dict:
    principal = authenticate(request)
    state = app_state(request)
    started = int(state.started_at)
    data = [_model(info, started) for info in state.registry.models(principal.account_id)
            if principal.may_use(info.model_id)]
    return {"object": "list", "data": data}


def _errors(dialect: Dialect) -> dict:
    """The error replies of a route, in its dialect (the schemas `api/openapi.py` adds)."""
    schema = {"$ref": f"#/components/schemas/{dialect.name.capitalize()}Error"}
    return {"default": {"description": f"An error in the {dialect.name} dialect",
                        "content": {"application/json": {"schema": schema}}}}


@router.get(OPENAI.path("/models/{model_id:path}"), responses=_errors(OPENAI))
@router.get(ZHIPU.path("/models/{model_id:path}"), responses=_errors(ZHIPU))
async def retrieve_model(request: Request, model_id: str) -> dict:
    principal = authenticate(request)
    state = app_state(request)
    info = next((i for i in state.registry.models(principal.account_id) if i.model_id == model_id), None)
    if info is None or not principal.may_use(model_id):
        raise ApiError(ErrorKind.MODEL_NOT_FOUND, f"The model {model_id!r} does not exist.", param="model")
    return _model(info, int(state.started_at))
