"""The embedding interface: token ids in, one vector per input out; and the dynamic batcher that
lets concurrent requests share forward passes.

An embedding model knows nothing about dialects or money. It tokenizes text, frames a sequence
of token ids with the special tokens its model expects, and embeds framed sequences. Usage is the
number of framed tokens: what the model actually reads.

Dynamic batching: a request's sequences go into a queue; a single worker waits a short window
after the first arrival for more, then sorts everything waiting by length, cuts it into length
buckets (powers of two) and runs each bucket as one padded forward pass, in a thread so the event
loop keeps serving. Requests that arrive while a pass runs wait for the next one, so under load
the batches grow by themselves and an idle server answers a lone request after one window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from glmaas.engines.base import EngineError, ModelInfo

log = logging.getLogger(__name__)

Vectors = np.ndarray  # (n, dimensions) float32, one row per input


@runtime_checkable
class EmbeddingModel(Protocol):
    """A loaded model that embeds. `info.context_length` is the most framed tokens one input may
    have; token ids run from 0 to `vocab_size - 1`."""

    info: ModelInfo
    dimensions: int
    vocab_size: int

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        ...

    def frame(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        """`token_ids` as the model reads them: with its special tokens around them."""
        ...

    async def embed(self, inputs: Sequence[tuple[int, ...]]) -> Vectors:
        """Unit-length vectors of framed inputs, in their order."""
        ...

    async def close(self) -> None:
        """Free the model."""
        ...


def length_bucket(n_tokens: int, smallest: int = 16) -> int:
    """The padded length a sequence of `n_tokens` runs at: the next power of two, at least `smallest`."""
    bucket = smallest
    while bucket < n_tokens:
        bucket *= 2
    return bucket


@dataclass
class _Pending:
    """One caller's inputs, waiting for their vectors."""

    inputs: Sequence[tuple[int, ...]]
    done: asyncio.Future[Vectors]
    rows: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0


class DynamicBatcher:
    """Runs `forward(padded ids, mask) -> vectors` over the inputs of concurrent callers, sharing
    passes among them. `forward` takes int64 arrays (B, T) and returns float32 (B, dimensions).

    `window_s`: how long the worker waits after a first arrival for company. `max_batch_tokens`:
    the most padded tokens (rows × bucket length) one pass takes; `max_rows`, the most inputs.
    `forward_passes` counts the passes run, so tests and metrics can see batching happen."""

    def __init__(self, forward: Callable[[np.ndarray, np.ndarray], np.ndarray], *, pad_id: int = 0,
                 window_s: float = 0.004, max_batch_tokens: int = 8192, max_rows: int = 256) -> None:
        self.forward = forward
        self.pad_id = pad_id
        self.window_s = window_s
        self.max_batch_tokens = max_batch_tokens
        self.max_rows = max_rows
        self.forward_passes = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def embed(self, inputs: Sequence[tuple[int, ...]]) -> Vectors:
        if not inputs:
            raise ValueError("nothing to embed")
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        assert self._queue is not None
        pending = _Pending(inputs, asyncio.get_running_loop().create_future(), [None] * len(inputs), len(inputs))
        self._queue.put_nowait(pending)
        # A cancelled caller's future is cancelled too; the worker then skips its inputs.
        return await pending.done

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            waiting = [await self._queue.get()]
            await asyncio.sleep(self.window_s)
            while not self._queue.empty():
                waiting.append(self._queue.get_nowait())
            await self._serve([p for p in waiting if not p.done.done()])

    async def _serve(self, waiting: list[_Pending]) -> None:
        items = [(p, i) for p in waiting for i in range(len(p.inputs))]
        items.sort(key=lambda item: len(item[0].inputs[item[1]]))
        for batch in self._cut(items):
            live = [(p, i) for p, i in batch if not p.done.done()]
            if not live:
                continue
            ids, mask = self._pad([p.inputs[i] for p, i in live])
            try:
                vectors = await asyncio.to_thread(self.forward, ids, mask)
            except Exception:
                # The model failed: every caller in this pass hears it, the details go to the log.
                log.exception("an embedding forward pass of %d inputs failed", len(live))
                for p, _ in live:
                    if not p.done.done():
                        p.done.set_exception(EngineError("the model failed to embed the inputs"))
                continue
            finally:
                self.forward_passes += 1
            for row, (p, i) in zip(vectors, live):
                if p.done.done():
                    continue
                p.rows[i] = row
                p.left -= 1
                if p.left == 0:
                    p.done.set_result(np.stack(p.rows))  # type: ignore[arg-type]

    def _cut(self, items: list[tuple[_Pending, int]]) -> list[list[tuple[_Pending, int]]]:
        """Items sorted by length → batches of one length bucket each, within the token budget."""
        batches: list[list[tuple[_Pending, int]]] = []
        current: list[tuple[_Pending, int]] = []
        bucket = 0
        for p, i in items:
            b = length_bucket(len(p.inputs[i]))
            full = len(current) >= self.max_rows or (len(current) + 1) * b > self.max_batch_tokens
            if current and (b != bucket or full):
                batches.append(current)
                current = []
            current.append((p, i))
            bucket = b
        if current:
            batches.append(current)
        return batches

    def _pad(self, rows: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
        """Rows padded to the longest of them (never past their bucket)."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for n, row in enumerate(rows):
            ids[n, :len(row)] = row
            mask[n, :len(row)] = 1
        return ids, mask
