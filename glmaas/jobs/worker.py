"""The background workers of one `glmaas serve` replica: each takes an item's lease, hands the
item to the API's handler (which runs it as a metered request), and, when it was a batch line,
finalizes the batch if it was the last. A renewer keeps this replica's leases alive; a replica
that dies stops renewing, and its items are taken over when their leases lapse, or sooner when
the sweep sees the replica stopped (its heartbeat stale, or its process gone from this host).
An item that has had `max_attempts` without ending is handed to `exhausted` instead, which fails
it (unbilled: that take admits nothing)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from glmaas.jobs import batches, leases
from glmaas.jobs.leases import LeasedItem
from glmaas.store.blobs import BlobStore
from glmaas.store.db import Database

log = logging.getLogger("glmaas.jobs")

Handler = Callable[[LeasedItem], Awaitable[None]]
# An idle worker polls after IDLE_S, backing off to MAX_IDLE_S while there is no work.
IDLE_S = 0.2
MAX_IDLE_S = 1.0
SWEEP_EVERY_S = 5.0


class Workers:
    def __init__(self, db: Database, blobs: BlobStore, owner: str, handler: Handler, *, count: int,
                 lease_s: float, max_attempts: int | None = None, exhausted: Handler | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        """`stopping`: once it says so (the replica's shutdown drain), no new item is taken; the
        other replicas take the queue."""
        self.db, self.blobs, self.owner, self.handler = db, blobs, owner, handler
        self.count, self.lease_s = count, lease_s
        self.max_attempts, self.exhausted = (max_attempts, exhausted) if exhausted else (None, None)
        self.stopping = stopping

    async def run(self) -> None:
        """Runs until cancelled."""
        await asyncio.gather(self._renew(), self._sweep(), *(self._work() for _ in range(self.count)))

    async def _work(self) -> None:
        idle = IDLE_S
        while True:
            try:
                item = None if self.stopping() else leases.take(self.db.engine, self.owner, self.lease_s,
                                                                 self.max_attempts)
                if item is None:
                    await asyncio.sleep(idle)
                    idle = min(MAX_IDLE_S, idle * 2)
                    continue
                idle = IDLE_S
                try:
                    run = self.exhausted if item.exhausted and self.exhausted else self.handler
                    await run(item)
                except Exception:
                    # This replica would renew the lease forever: the item goes back to the queue
                    # for another attempt (under a new request id) instead.
                    log.exception("background work on %s failed; it will run again", item.id)
                    leases.give_back(self.db.engine, item)
                    await asyncio.sleep(IDLE_S)
                if item.batch_id is not None:
                    self.finalize(item.batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not end the worker
                log.exception("background work failed")
                await asyncio.sleep(IDLE_S)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                leases.renew(self.db.engine, self.owner, self.lease_s)
            except Exception:
                log.exception("renewing leases failed")

    async def _sweep(self) -> None:
        """Expire batches past their window; finalize batches whose last line ended elsewhere or
        before a crash."""
        while True:
            try:
                with self.db.session() as session, session.begin():
                    if leases.release_stopped(session, self.owner):
                        log.warning("took over background work left running by a replica that stopped")
                    batches.expire_overdue(session)
                with self.db.session() as session:
                    open_ids = batches.open_batches(session)
                for batch_id in open_ids:
                    self.finalize(batch_id)
            except Exception:
                log.exception("finalizing batches failed")
            await asyncio.sleep(SWEEP_EVERY_S)

    def finalize(self, batch_id: str) -> None:
        with self.db.session() as session, session.begin():
            batches.finalize(session, self.blobs, batch_id)
