"""Background work on the API's side: what every resource's runner shares (reading an item's
request, running it in a background slot under a metered run whose settlement writes its result),
the form of a result (an OpenAI batch output or error line; an async task's response or error),
and which runner takes an item, by the endpoint it calls. Leasing and the workers themselves are
`glmaas.jobs`."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection

from glmaas.api.dialects import DIALECTS, OPENAI, Dialect
from glmaas.api.errors import ApiError, ErrorKind, from_platform
from glmaas.api.state import AppState
from glmaas.engines.base import EngineError
from glmaas.jobs import leases
from glmaas.jobs.leases import ItemKind, ItemState, LeasedItem
from glmaas.platform.errors import PlatformError, RateLimited
from glmaas.platform.metered import GenerationTimeout, MeteredRun
from glmaas.platform.metering import Finish, Outcome, RequestStatus

M = TypeVar("M", bound=BaseModel)
Runner = Callable[[AppState, LeasedItem], Awaitable[None]]
# A rate-limited item waits at least this long before it is offered again.
MIN_RETRY_S = 1.0
# The code of a batch line's error when its attempts ran out.
ATTEMPTS_EXHAUSTED = "max_attempts_exceeded"
DIALECT_BY_NAME: dict[str, Dialect] = {d.name: d for d in DIALECTS}


def dialect_of_item(item: LeasedItem) -> Dialect:
    return DIALECT_BY_NAME.get(item.dialect, OPENAI)


def result_line(item: LeasedItem, *, response: BaseModel | None = None, error: ApiError | None = None,
                code: str | None = None) -> str:
    """The item's result as stored: a batch line as a line of OpenAI's output or error file (its
    error's `code` the dialect's unless given), an async task as its response body or its error body."""
    dialect = dialect_of_item(item)
    if item.kind is ItemKind.ASYNC_CHAT:
        return response.model_dump_json() if response is not None else json.dumps(dialect.error_body(error))
    if response is not None:
        answer = {"status_code": 200, "request_id": item.request_id, "body": response.model_dump()}
        failure = None
    else:
        body = dialect.error_body(error)
        answer = {"status_code": dialect.status(error), "request_id": item.request_id, "body": body}
        failure = {"code": code or body["error"]["code"], "message": error.message}
    return json.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": item.custom_id,
                       "response": answer, "error": failure}, ensure_ascii=False)


def fail_item(state: AppState, item: LeasedItem, error: ApiError, *, code: str | None = None) -> None:
    """End the item with `error`, unbilled (it was refused before admission)."""
    with state.db.engine.begin() as conn:
        leases.finish(conn, item, ItemState.FAILED, result_line(item, error=error, code=code))


async def fail_exhausted(state: AppState, item: LeasedItem) -> None:
    """End an item whose attempts ran out (each died before it could finish: its replica went
    down, or its run kept failing). Unbilled: attempts cut short settle unbilled, and this take
    admits nothing."""
    tries = item.max_attempts or item.attempt - 1
    fail_item(state, item, ApiError(
        ErrorKind.ENGINE_ERROR, f"The request was attempted {tries} time{'s' if tries != 1 else ''} "
        "and never completed; it will not be tried again."), code=ATTEMPTS_EXHAUSTED)


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


def request_of(item: LeasedItem, schema: type[M]) -> M:
    """The item's request body as `schema`, or the `ApiError` a route would answer."""
    try:
        return schema.model_validate(json.loads(item.body))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(ErrorKind.INVALID_REQUEST, f"Invalid parameter {param}: {first['msg']}.",
                       param=param) from None


def finish_with(item: LeasedItem, response: Callable[[], BaseModel]) -> Finish:
    """The settlement's `finish` of an item: its response (built when the run ends well) or the
    engine's failure, written with the bill. A run stopped by the server's shutdown writes
    nothing: the item stays leased and runs again."""

    def finish(conn: Connection, outcome: Outcome) -> bool:
        if outcome.status is RequestStatus.ABORTED:
            return False
        if outcome.status is RequestStatus.OK:
            return leases.finish(conn, item, ItemState.DONE, result_line(item, response=response()))
        error = ApiError(ErrorKind.ENGINE_ERROR, "The model failed on this request.")
        return leases.finish(conn, item, ItemState.FAILED, result_line(item, error=error))

    return finish


async def run_in_slot(state: AppState, item: LeasedItem, model: str, admit: Callable[[], Awaitable[MeteredRun]],
                      work: Callable[[MeteredRun], Awaitable[object]]) -> None:
    """Within a background slot of `model` (`glmaas.jobs.gate`): admit the item's request, then do
    its work under the run, which settles it (and writes its result) once. A rate limit puts the
    item back in the queue; any other refusal fails it, unbilled."""
    retry_after: float | None = None
    async with state.gate.slot(model):
        try:
            run = await admit()
        except RateLimited as exc:
            leases.give_back(state.db.engine, item, started=False)
            retry_after = max(MIN_RETRY_S, exc.retry_after)
        except PlatformError as exc:
            return fail_item(state, item, from_platform(exc))
        else:
            try:
                await work(run)
            except (EngineError, GenerationTimeout):
                pass  # the settlement wrote the item's error
    if retry_after is not None:
        await asyncio.sleep(retry_after)  # outside the slot: this worker holds nothing while it waits
    return None
