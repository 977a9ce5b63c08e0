"""Group commit: the steps of concurrent requests' books share their network round trips.

On PostgreSQL and Redis each step of a request's books (its admission, its durable progress, its
settlement) waits on the network, and the drivers' Python around each round trip costs the
gateway more CPU than the servers spend on the work. A `StepQueue` runs one kind of step. The
first request to ask lets the event loop turn a few times (the tasks asking for the same step
meanwhile join it), then runs the step on a worker thread, as a lone request always did. Requests that ask
while that step is on the network queue up, and the next round trip carries all of them: one
Redis pipeline, one PostgreSQL transaction with one commit (`Meter.admit_many` and its
siblings). So a lone request waits no longer than before (a few turns of the loop), and under
concurrency each request pays a share of the round trips that falls as more of them queue.

Only one batch of a kind is on the network at a time: that is what lets the others gather.
A step, once asked for, always runs to its end and its caller gets the result, even when the
caller is cancelled meanwhile (a client disconnect): an admission that was written must reach
the request that will settle it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")

# At most this many steps in one round trip: bounds one transaction's locks and its statement.
MAX_BATCH = 64
# Turns of the event loop a batch waits for its neighbours before it leaves. Each lets every
# ready task run on to its next await; a request needs a few to get from one step of its HTTP
# path to the next. Four turns cost a lone request about 17 µs (`bench/group_commit.py`); under
# load they served a quarter more requests than one turn did (bench/README.md, "Group commit on
# PostgreSQL + Redis").
GATHER_TURNS = 4


@dataclass(eq=False)
class _Entry(Generic[T, R]):
    item: T
    done: anyio.Event = field(default_factory=anyio.Event)
    # Set (with `done`) when this entry must run the next batch itself, rather than its result.
    leads: bool = False
    result: R | None = None
    error: BaseException | None = None


class StepQueue(Generic[T, R]):
    """Runs `run_batch` on a worker thread for the items asked for while the previous batch was
    on the network. `run_batch` answers each item in order, with its result or the exception it
    raised; if it raises itself, every item of the batch gets that exception."""

    def __init__(self, run_batch: Callable[[list[T]], list[R | BaseException]], *,
                 max_batch: int = MAX_BATCH) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: list[_Entry[T, R]] = []
        self._busy = False
        self._thread = anyio.CapacityLimiter(1)
        # Since start: batches sent and the steps they carried (their ratio is the mean batch).
        self.batches = 0
        self.steps = 0

    async def run(self, item: T) -> R:
        """The result of `item`'s step, run alone or in a batch with its neighbours' steps."""
        entry: _Entry[T, R] = _Entry(item)
        with anyio.CancelScope(shield=True):
            self._queue.append(entry)
            if self._busy:
                await entry.done.wait()
            else:
                self._busy = entry.leads = True
            if entry.leads:
                # Let the tasks that are ready run first: those about to ask for the same step
                # join this batch instead of waiting for the next round trip.
                for _ in range(GATHER_TURNS):
                    await anyio.sleep(0)
                await self._flush()
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]

    async def _flush(self) -> None:
        """Run the batch at the head of the queue (the leading entry is its first), answer its
        entries, and hand the lead to the first entry still waiting, if any."""
        batch = self._queue[:self._max_batch]
        del self._queue[:self._max_batch]
        self.batches += 1
        self.steps += len(batch)
        try:
            results = await anyio.to_thread.run_sync(self._run_batch, [e.item for e in batch],
                                                     limiter=self._thread)
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} steps gave {len(results)} results")
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            results = [exc] * len(batch)
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                entry.error = result
            else:
                entry.result = result
            entry.done.set()
        if self._queue:
            head = self._queue[0]
            head.leads = True
            head.done.set()
        else:
            self._busy = False
