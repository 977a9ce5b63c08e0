"""Zhipu's async chat: `POST /api/paas/v4/async/chat/completions` queues a chat completion and
answers its task id at once; `GET /api/paas/v4/async-result/{id}` answers PROCESSING, SUCCESS
(with the choices and usage) or FAIL. Tasks are persisted work items, run by the background
workers and billed once; another account's task answers 404."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.chat.protocol import ChatCompletionRequest, to_canonical
from glmaas.api.chat.serving import build_prompt
from glmaas.api.dialects import ZHIPU
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.openapi import BodyRoute
from glmaas.api.requests import (
    JSONModelResponse,
    app_state,
    authenticate,
    new_request_id,
    parse_body,
    refusals_on_wire,
    take_request_id,
)
from glmaas.jobs import async_tasks
from glmaas.jobs.leases import ItemState

TASK_STATUS = {ItemState.DONE: "SUCCESS", ItemState.FAILED: "FAIL"}


class AsyncTask(BaseModel):
    id: str
    request_id: str
    model: str
    task_status: Literal["PROCESSING", "SUCCESS", "FAIL"]
    choices: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A task still running has no choices, usage or error: left out, as the platform does.
        return {k: v for k, v in handler(self).items() if v is not None}


async def submit(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    body = await parse_body(request, ChatCompletionRequest)
    chat = to_canonical(body)
    if chat.stream:
        raise ApiError(ErrorKind.INVALID_REQUEST, "An async task cannot stream; leave stream out.", param="stream")
    task_id = new_request_id()
    request_id = take_request_id(request, chat.request_id or task_id)
    build_prompt(state, chat, principal.account_id)  # refuse now what could never run: unknown model, prompt too long
    if not principal.may_use(chat.model):
        raise ApiError(ErrorKind.MODEL_NOT_ALLOWED, f"This API key may not use the model {chat.model!r}.")
    # Kept as sent (it parsed, so it is UTF-8 JSON): the worker reads it as the route did.
    raw = (await request.body()).decode()
    with state.db.session() as session, session.begin():
        async_tasks.submit(session, task_id=task_id, account_id=principal.account_id, key_id=principal.key_id,
                           model=chat.model, body=raw)
    return JSONModelResponse(AsyncTask(id=task_id, request_id=request_id, model=chat.model,
                                       task_status="PROCESSING"))


async def result(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    with refusals_on_wire(), state.db.session() as session:
        task = async_tasks.get_task(session, principal.account_id, request.path_params["task_id"])
    body = json.loads(task.body)
    request_id = body.get("request_id") or task.id
    status = TASK_STATUS.get(ItemState(task.state), "PROCESSING")
    answer = AsyncTask(id=task.id, request_id=request_id, model=task.model, task_status=status)
    if status == "SUCCESS":
        completion = json.loads(task.result)
        answer.choices, answer.usage = completion["choices"], completion["usage"]
    elif status == "FAIL":
        answer.error = json.loads(task.result)["error"]
    return JSONModelResponse(answer)


body_routes = [BodyRoute(ZHIPU.path("/async/chat/completions"), "Submit an async chat completion (zhipu dialect)",
                         ChatCompletionRequest, AsyncTask)]
routes = [
    Route(ZHIPU.path("/async/chat/completions"), submit, methods=["POST"]),
    Route(ZHIPU.path("/async-result/{task_id}"), result, methods=["GET"]),
]
