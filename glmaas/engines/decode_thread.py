"""The thread side every local engine shares: sequences handed in from event loops, one thread
that decodes them step by step, and their deltas handed back to each request's event loop.

`DecodeThread` owns the hand-over: `submit`, `cancel`, `close`, the wait for work, failing every
sequence in flight when a step raises. An engine's loop (llama.cpp's, GLM's) adds what a step is
and what it keeps per slot. `followed` is the event-loop side of one sequence.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Generic, Protocol, TypeVar

from glmaas.engines.base import Delta, EngineError

log = logging.getLogger("glmaas.engines")


class Handed(Protocol):
    """What the thread side reads of a sequence."""

    cancelled: bool
    finished: bool
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


S = TypeVar("S", bound=Handed)


def deliver(items: list[tuple[asyncio.Queue, Delta | BaseException]]) -> None:
    """Put one step's deltas on their queues (run on the requests' event loop: one callback per
    loop per step, not per token)."""
    for queue, item in items:
        queue.put_nowait(item)


class DecodeThread(Generic[S]):
    """Sequences in (`submit`), deltas out, on a thread of its own named `name`. Subclasses
    implement `step` and may override `_drop_cancelled` (under the lock), `_forget` (a sequence
    failed or dropped) and `_after_failure` (tidy state a failed step may leave)."""

    def _start_thread(self, name: str) -> None:
        self._cv = threading.Condition()
        self._inbox: list[S] = []
        self._waiting: deque[S] = deque()
        self._running: list[S] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- called from any thread ------------------------------------------------------------

    def submit(self, seq: S) -> None:
        with self._cv:
            if self._closing:
                raise EngineError("the engine is closed", retryable=True)
            self._inbox.append(seq)
            self._cv.notify()

    def cancel(self, seq: S) -> None:
        with self._cv:
            seq.cancelled = True
            self._cv.notify()

    def active_sequences(self) -> int:
        with self._cv:
            return len(self._inbox) + len(self._waiting) + len(self._running)

    def _stop_thread(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()

    # -- the loop thread -------------------------------------------------------------------

    def step(self) -> None:
        raise NotImplementedError

    def _drop_cancelled(self) -> None:
        """Leave out what was cancelled since the last step (called under the lock)."""
        self._waiting = deque(s for s in self._waiting if not s.cancelled)

    def _forget(self, seq: S) -> None:
        seq.finished = True

    def _after_failure(self) -> None:
        """Put right what a failed step may have left (called once every sequence is failed)."""

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closing or self._inbox or self._waiting or self._running):
                    self._cv.wait()
                if self._closing:
                    break
                self._waiting.extend(self._inbox)
                self._inbox.clear()
                self._drop_cancelled()
            try:
                self.step()
            except Exception as exc:  # a fault fails the requests in flight, not the engine
                log.exception("%s: a decode step failed", self._thread.name)
                self._fail_all(EngineError(f"decode failed: {exc}"))
        self._fail_all(EngineError("the engine was closed", retryable=True))

    def _fail_all(self, error: EngineError) -> None:
        with self._cv:
            doomed = list(self._running) + list(self._waiting) + self._inbox
            self._running, self._waiting, self._inbox = [], deque(), []
        for seq in doomed:
            self._forget(seq)
            try:
                seq.loop.call_soon_threadsafe(seq.queue.put_nowait, error)
            except RuntimeError:
                pass  # its event loop is closed: nobody is waiting
        self._after_failure()


class Submits(Protocol):
    def submit(self, seq: Any) -> None: ...

    def cancel(self, seq: Any) -> None: ...


async def followed(loop: Submits, seq: Any, queue: asyncio.Queue) -> AsyncIterator[Delta]:
    """Submit `seq` to `loop` and yield the deltas it puts on `queue` until the last (an
    exception put there is raised). Stopped early (aclose(), task cancellation), the sequence is
    cancelled: the loop drops it before its next step."""
    loop.submit(seq)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return
    finally:
        if not seq.finished:
            loop.cancel(seq)
