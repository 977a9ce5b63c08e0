"""Chat completions run in the background: the lines of a batch and Zhipu's async tasks.

Each leased item is one metered request, like an interactive one: prompt → admit (at the batch
price for batch lines) → generate → one settlement. Its result (the response, or the error in the
dialect it was created in) is written by the settlement's `finish`, in the same transaction, so
a line never ends billed without its result, nor with its result unbilled. A refusal before
admission (bad request, insufficient balance) ends the item as failed and bills nothing; a rate
limit puts it back in the queue.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

from pydantic import ValidationError
from sqlalchemy import Connection

from glmaas.api.chat.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    UsageInfo,
    to_canonical,
)
from glmaas.api.chat.serving import build_prompt, generation_of
from glmaas.api.errors import ApiError, ErrorKind, from_platform
from glmaas.api.state import AppState
from glmaas.api.work import dialect_of_item, fail_item, result_line
from glmaas.engines.base import EngineError
from glmaas.jobs import leases
from glmaas.jobs.leases import ItemKind, ItemState, LeasedItem
from glmaas.platform.errors import PlatformError, RateLimited
from glmaas.platform.metered import GenerationTimeout, MeteredRun, start_run
from glmaas.platform.metering import Outcome, RequestStatus

# A rate-limited line waits at least this long before it is offered again.
MIN_RETRY_S = 1.0


async def run_chat_item(state: AppState, item: LeasedItem) -> None:
    """Run one leased chat item to its end (or back to the queue)."""
    arrived = time.monotonic()
    dialect = dialect_of_item(item)
    try:
        principal = state.authenticator.principal_of(item.key_id)
        body = ChatCompletionRequest.model_validate(json.loads(item.body))
        chat = replace(to_canonical(body), stream=False)
        prompt = build_prompt(state, chat)
    except PlatformError as exc:
        return fail_item(state, item, from_platform(exc))
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        return fail_item(state, item, ApiError(ErrorKind.INVALID_REQUEST, f"Invalid parameter {param}: "
                                                    f"{first['msg']}.", param=param))
    except ApiError as exc:
        return fail_item(state, item, exc)

    pieces: list[str] = []
    retry_after: float | None = None

    def finish(conn: Connection, outcome: Outcome) -> bool:
        if outcome.status is RequestStatus.ABORTED:
            return False  # the server is stopping: the item stays leased and runs again later
        if outcome.status is RequestStatus.OK:
            completion = ChatCompletion(
                id=dialect.completion_id(run.request_id), request_id=run.request_id, created=run.created,
                model=chat.model, usage=UsageInfo.of(run),
                choices=[Choice(finish_reason=run.finish_reason, message=ChatMessage(content="".join(pieces)))])
            return leases.finish(conn, item, ItemState.DONE, result_line(item, response=completion))
        error = ApiError(ErrorKind.ENGINE_ERROR, "The model failed on this request.")
        return leases.finish(conn, item, ItemState.FAILED, result_line(item, error=error))

    async with state.gate.slot(chat.model):
        price_percent = state.batch_price_percent if item.kind is ItemKind.BATCH_LINE else 100
        try:
            run: MeteredRun = start_run(
                state.meter, principal, chat.model, item.request_id, prompt_tokens=len(prompt.token_ids),
                max_tokens=prompt.max_tokens, arrived=arrived, durable=False, timeout_s=state.request_timeout,
                price_percent=price_percent, finish=finish)
        except RateLimited as exc:
            leases.give_back(state.db.engine, item)
            retry_after = max(MIN_RETRY_S, exc.retry_after)
        except PlatformError as exc:
            return fail_item(state, item, from_platform(exc))
        else:
            try:
                async for delta in run.generate(prompt.engine.generate(generation_of(chat, prompt, item.request_id))):
                    pieces.append(delta.text)
            except (EngineError, GenerationTimeout):
                pass  # the settlement wrote the item's error
    if retry_after is not None:
        await asyncio.sleep(retry_after)  # outside the slot: this worker holds nothing while it waits
    return None
