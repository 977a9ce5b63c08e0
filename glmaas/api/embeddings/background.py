"""Embeddings run in the background: the lines of a batch for `/v1/embeddings`.

Like a chat line (`api/chat/background.py`): tokenize → admit (at the batch price) → compute →
one settlement, whose `finish` writes the line's response with its bill.
"""

from __future__ import annotations

import time

from glmaas.api.embeddings.protocol import EmbeddingRequest, EmbeddingResponse
from glmaas.api.embeddings.serving import prepare, respond
from glmaas.api.errors import ApiError, from_platform
from glmaas.api.state import AppState
from glmaas.api.work import fail_item, finish_with, request_of, run_in_slot
from glmaas.engines.embedding import Vectors
from glmaas.jobs.leases import LeasedItem
from glmaas.platform.errors import PlatformError
from glmaas.platform.metered import MeteredRun, start_run


async def run_embedding_item(state: AppState, item: LeasedItem) -> None:
    """Run one leased embeddings line to its end (or back to the queue)."""
    arrived = time.monotonic()
    try:
        principal = state.authenticator.principal_of(item.key_id)
        req = request_of(item, EmbeddingRequest)
        inputs = prepare(state, req)
    except PlatformError as exc:
        return fail_item(state, item, from_platform(exc))
    except ApiError as exc:
        return fail_item(state, item, exc)
    computed: list[Vectors] = []  # the vectors, once computed: the settlement's response reads them

    def response() -> EmbeddingResponse:
        return respond(req, inputs, computed[0])

    async def admit() -> MeteredRun:
        # An embedding sells its input only: nothing is generated, so nothing more is held.
        return await start_run(state.meter, principal, req.model, item.request_id,
                               prompt_tokens=inputs.prompt_tokens, max_tokens=0, arrived=arrived, durable=False,
                               timeout_s=state.request_timeout, price_percent=state.batch_price_percent,
                               finish=finish_with(item, response), end_user=req.user)

    async def vectors() -> Vectors:
        computed.append(await inputs.model.embed(inputs.framed))
        return computed[0]

    async def work(run: MeteredRun) -> None:
        await run.compute(vectors())

    await run_in_slot(state, item, req.model, admit, work)
    return None
