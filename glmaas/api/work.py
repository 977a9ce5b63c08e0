"""Background work on the API's side: the form of an item's result (an OpenAI batch output or
error line; an async task's completion or error), and which resource runs an item, by the
endpoint it calls. Leasing and the workers themselves are `glmaas.jobs`."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from glmaas.api.dialects import OPENAI, ZHIPU, Dialect
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.state import AppState
from glmaas.jobs import leases
from glmaas.jobs.leases import ItemKind, ItemState, LeasedItem

Runner = Callable[[AppState, LeasedItem], Awaitable[None]]
DIALECT_BY_NAME: dict[str, Dialect] = {OPENAI.name: OPENAI, ZHIPU.name: ZHIPU}


def dialect_of_item(item: LeasedItem) -> Dialect:
    return DIALECT_BY_NAME.get(item.dialect, OPENAI)


def result_line(item: LeasedItem, *, response: BaseModel | None = None, error: ApiError | None = None) -> str:
    """The item's result as stored: a batch line as a line of OpenAI's output or error file, an
    async task as its response body or its error body."""
    dialect = dialect_of_item(item)
    if item.kind is ItemKind.ASYNC_CHAT:
        return response.model_dump_json() if response is not None else json.dumps(dialect.error_body(error))
    if response is not None:
        answer = {"status_code": 200, "request_id": item.request_id, "body": response.model_dump()}
        failure = None
    else:
        body = dialect.error_body(error)
        answer = {"status_code": dialect.status(error), "request_id": item.request_id, "body": body}
        failure = {"code": body["error"]["code"], "message": error.message}
    return json.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": item.custom_id,
                       "response": answer, "error": failure}, ensure_ascii=False)


def fail_item(state: AppState, item: LeasedItem, error: ApiError) -> None:
    """End the item with `error`, unbilled (it was refused before admission)."""
    with state.db.engine.begin() as conn:
        leases.finish(conn, item, ItemState.FAILED, result_line(item, error=error))


def runner_for(runners: dict[str, Runner]) -> Callable[[AppState, LeasedItem], Awaitable[None]]:
    """The workers' handler: each item to the runner of its endpoint; an endpoint this deployment
    does not run in the background fails its items cleanly into the error file."""

    async def run_item(state: AppState, item: LeasedItem) -> None:
        runner = runners.get(item.endpoint)
        if runner is None:
            return fail_item(state, item, ApiError(
                ErrorKind.INVALID_REQUEST, f"{item.endpoint} is not served in batches by this deployment."))
        await runner(state, item)

    return run_item
