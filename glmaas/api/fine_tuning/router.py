"""Routes: `/v1/fine_tuning/jobs` and `/api/paas/v4/fine_tuning/jobs` — create, list, retrieve,
cancel, events, checkpoints; deleting a tuned model (Zhipu's `fine_tuning/fine_tuned_models/{model}`,
OpenAI's `DELETE /v1/models/{model}`). Every job and tuned model is its account's: to another
account it does not exist. The training runs in the runner's worker processes (`glmaas.jobs`)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.dialects import DIALECTS, OPENAI
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.fine_tuning.protocol import (
    FineTunedModelDeleted,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    FineTuningJobObject,
    ModelDeleted,
)
from glmaas.api.fine_tuning.serving import base_gguf, unserve_model
from glmaas.api.openapi import BodyRoute
from glmaas.api.requests import (
    JSONModelResponse,
    app_state,
    authenticate,
    new_request_id,
    parse_body,
    refusals_on_wire,
)
from glmaas.jobs import fine_tuning
from glmaas.jobs.fine_tuning import Hyperparameters, NewJob
from glmaas.platform.auth import Principal
from glmaas.platform.errors import NotFound
from glmaas.platform.pricing import price_of
from glmaas.training.chat_data import ChatFormat

MAX_LIST_LIMIT = 100


def _hyperparameters(body: FineTuningJobCreate) -> Hyperparameters:
    given = body.hyperparameters
    if body.method is not None and body.method.supervised is not None and body.method.supervised.hyperparameters:
        given = body.method.supervised.hyperparameters
    chosen = {k: v for k, v in (given.model_dump() if given else {}).items() if v is not None and v != "auto"}
    return Hyperparameters(**chosen)


def _chat_format(request: Request, principal: Principal, model: str) -> ChatFormat:
    state = app_state(request)
    engine = state.registry.get(model, principal.account_id)
    if engine is None:
        raise ApiError(ErrorKind.MODEL_NOT_FOUND, f"The model {model!r} does not exist.", param="model")
    if not principal.may_use(model):
        raise ApiError(ErrorKind.MODEL_NOT_ALLOWED, f"This API key may not use the model {model!r}.")
    if base_gguf(state, model, principal.account_id) is None or not engine.info.chat_template:
        raise ApiError(ErrorKind.INVALID_REQUEST, f"The model {model!r} cannot be fine-tuned: only models served "
                       "from a local GGUF file with a chat template can.", param="model")
    info = engine.info
    return ChatFormat(info.chat_template or "", engine.tokenize, info.bos_token, info.eos_token)


async def create_job(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    body = await parse_body(request, FineTuningJobCreate)
    fmt = _chat_format(request, principal, body.model)
    with refusals_on_wire():
        new = NewJob(account_id=principal.account_id, key_id=principal.key_id, model=body.model,
                     training_file=body.training_file, validation_file=body.validation_file, suffix=body.suffix,
                     lora=body.method.supervised.lora if body.method and body.method.supervised else True,
                     hyperparameters=_hyperparameters(body))

    def create() -> FineTuningJobObject:
        with refusals_on_wire(), state.db.session() as session, session.begin():
            price = price_of(session, body.model)
            return FineTuningJobObject.of(fine_tuning.create_job(session, state.blobs, new, fmt, price))

    # Tokenizing the files takes a while: off the event loop.
    return JSONModelResponse(await asyncio.to_thread(create))


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise ApiError(ErrorKind.INVALID_REQUEST, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.",
                       param="limit")
    return int(raw)


def _page(items: list, more: bool) -> dict:
    return {"data": items, "has_more": more, "first_id": items[0].id if items else None,
            "last_id": items[-1].id if items else None}


async def list_jobs(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    limit = _limit(request)
    with state.db.session() as session:
        found, more = fine_tuning.list_jobs(session, principal.account_id, limit=limit,
                                            after=request.query_params.get("after"))
        data = [FineTuningJobObject.of(j) for j in found]
    return JSONModelResponse(FineTuningJobList(**_page(data, more)))


async def retrieve_job(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    with refusals_on_wire(), state.db.session() as session:
        job = fine_tuning.get_job(session, principal.account_id, request.path_params["job_id"])
        return JSONModelResponse(FineTuningJobObject.of(job))


async def cancel_job(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    with refusals_on_wire(), state.db.session() as session, session.begin():
        job = fine_tuning.cancel_job(session, principal.account_id, request.path_params["job_id"])
        return JSONModelResponse(FineTuningJobObject.of(job))


async def list_events(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    limit = _limit(request)
    with refusals_on_wire(), state.db.session() as session:
        job = fine_tuning.get_job(session, principal.account_id, request.path_params["job_id"])
        found, more = fine_tuning.list_events(session, job, limit=limit, after=request.query_params.get("after"))
        data = [FineTuningJobEvent.of(e) for e in found]
    return JSONModelResponse(FineTuningJobEventList(**_page(data, more)))


async def list_checkpoints(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    limit = _limit(request)
    with refusals_on_wire(), state.db.session() as session:
        job = fine_tuning.get_job(session, principal.account_id, request.path_params["job_id"])
        found, more = fine_tuning.list_checkpoints(session, job, limit=limit,
                                                   after=request.query_params.get("after"))
        data = [FineTuningJobCheckpoint.of(c, job) for c in found]
    return JSONModelResponse(FineTuningJobCheckpointList(**_page(data, more)))


async def _delete_model(request: Request, model: str) -> None:
    state = app_state(request)
    principal = authenticate(request)
    with refusals_on_wire(), state.db.session() as session, session.begin():
        try:
            job = fine_tuning.delete_model(session, principal.account_id, model)
        except NotFound:
            raise ApiError(ErrorKind.MODEL_NOT_FOUND, f"The model {model!r} does not exist.", param="model") from None
        session.flush()
        session.expunge(job)
    await unserve_model(state, job)


async def delete_fine_tuned_model(request: Request) -> Response:
    model = request.path_params["model"]
    await _delete_model(request, model)
    return JSONModelResponse(FineTunedModelDeleted(request_id=new_request_id(), model_name=model))


async def delete_model(request: Request) -> Response:
    model = request.path_params["model"]
    await _delete_model(request, model)
    return JSONModelResponse(ModelDeleted(id=model))


body_routes = [BodyRoute(d.path("/fine_tuning/jobs"), f"Create a fine-tuning job ({d.name} dialect)",
                         FineTuningJobCreate, FineTuningJobObject) for d in DIALECTS]
routes = [route for d in DIALECTS for route in (
    Route(d.path("/fine_tuning/jobs"), create_job, methods=["POST"]),
    Route(d.path("/fine_tuning/jobs"), list_jobs, methods=["GET"]),
    Route(d.path("/fine_tuning/jobs/{job_id}"), retrieve_job, methods=["GET"]),
    Route(d.path("/fine_tuning/jobs/{job_id}/cancel"), cancel_job, methods=["POST"]),
    Route(d.path("/fine_tuning/jobs/{job_id}/events"), list_events, methods=["GET"]),
    Route(d.path("/fine_tuning/jobs/{job_id}/checkpoints"), list_checkpoints, methods=["GET"]),
    Route(d.path("/fine_tuning/fine_tuned_models/{model:path}"), delete_fine_tuned_model, methods=["DELETE"]),
)] + [Route(OPENAI.path("/models/{model:path}"), delete_model, methods=["DELETE"])]
