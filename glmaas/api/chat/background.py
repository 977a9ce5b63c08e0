"""Chat completions run in the background: the lines of a batch and Zhipu's async tasks.

Each leased item is one metered request, like an interactive one: prompt → admit (at the batch
price for batch lines) → generate → one settlement. Its result (the response, or the error in the
dialect it was created in) is written by the settlement's `finish`, in the same transaction, so
a line never ends billed without its result, nor with its result unbilled. A refusal before
admission (bad request, insufficient balance) ends the item as failed and bills nothing; a rate
limit puts it back in the queue.
"""

from __future__ import annotations

import time
from dataclasses import replace

from glmaas.api.chat.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    UsageInfo,
    to_canonical,
)
from glmaas.api.chat.serving import build_prompt, generate, parser_of, piece_of, reply_choice
from glmaas.api.errors import ApiError, from_platform
from glmaas.api.state import AppState
from glmaas.api.work import (
    dialect_of_item,
    fail_item,
    finish_with,
    request_of,
    run_in_slot,
)
from glmaas.engines.chat_output import ChatPiece
from glmaas.jobs.leases import ItemKind, LeasedItem
from glmaas.platform.errors import PlatformError
from glmaas.platform.metered import MeteredRun, start_run


async def run_chat_item(state: AppState, item: LeasedItem) -> None:
    """Run one leased chat item to its end (or back to the queue)."""
    arrived = time.monotonic()
    dialect = dialect_of_item(item)
    try:
        principal = state.authenticator.principal_of(item.key_id)
        chat = replace(to_canonical(request_of(item, ChatCompletionRequest)), stream=False)
        prompt = build_prompt(state, chat, item.account_id)
    except PlatformError as exc:
        return fail_item(state, item, from_platform(exc))
    except ApiError as exc:
        return fail_item(state, item, exc)
    parser = parser_of(chat, prompt)  # reasoning and tool calls, as an interactive reply has them
    reply = ChatPiece()
    run: MeteredRun  # bound by admit(), read when the run settles

    def completion() -> ChatCompletion:
        # Built as the run settles, which is when generation has ended: what the parser still
        # holds is the reply's end. (A parser gives what it holds once.)
        reply.extend(parser.finish())
        return ChatCompletion(
            id=dialect.completion_id(run.request_id), request_id=run.request_id, created=run.created,
            model=chat.model, usage=UsageInfo.of(run, parser.reasoning_tokens), choices=[reply_choice(run, reply)])

    async def admit() -> MeteredRun:
        nonlocal run
        run = await start_run(state.meter, principal, chat.model, item.request_id,
                              prompt_tokens=prompt.prompt_tokens, max_tokens=prompt.max_tokens, arrived=arrived,
                              durable=False, timeout_s=state.request_timeout,
                              price_percent=state.batch_price_percent if item.kind is ItemKind.BATCH_LINE else 100,
                              finish=finish_with(item, completion), end_user=chat.user)
        return run

    async def work(run: MeteredRun) -> None:
        async for delta in run.generate(generate(chat, prompt, item.request_id, principal.account_id)):
            reply.extend(piece_of(delta, parser))

    await run_in_slot(state, item, chat.model, admit, work)
    return None
