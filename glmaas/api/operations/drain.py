"""A replica's graceful shutdown: the drain between SIGTERM and the server's exit.

    SIGTERM ─► draining: /readyz answers 503 at once (the load balancer stops sending), a new
               request gets a 503 with `Retry-After` in its dialect (another replica takes it)
            ─► the requests in flight finish, streams included, each settled as usual
            ─► at `--drain-timeout` (default 30 s) the runs still going are cut: each stops at its
               next token as after an engine fault (`MeteredRun.cut_short`), billed as produced
            ─► the server stops listening and exits 0.

`glmaas.server` turns the signal into `Drain.run`; uvicorn's own shutdown follows it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from glmaas.api.dialects import response_for
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.metered import RequestRecord, current_record

log = logging.getLogger("glmaas.shutdown")

# Probes and scrapes are answered while draining: they are how the drain is seen.
UNGATED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# After the cut, how long the cut runs have to reach their next token and end.
CUT_GRACE_S = 5.0
POLL_S = 0.05
# What a refused client is told to wait before sending again (to another replica, behind a
# load balancer that has seen /readyz fail).
RETRY_AFTER_S = 1


class Drain:
    """The drain of one replica: whether it has begun, and the requests still being served."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self._serving: set[RequestRecord] = set()

    @property
    def in_flight(self) -> int:
        return len(self._serving)

    def begin(self) -> None:
        """Refuse new requests and fail readiness from now on (safe from a signal handler)."""
        self.draining = True

    async def run(self) -> None:
        """Drain: wait for the requests in flight, up to `timeout_s`; then cut the runs still
        going and give them `CUT_GRACE_S` to end as cut."""
        self.begin()
        log.info("draining: %d requests in flight, waiting up to %g s", self.in_flight, self.timeout_s)
        if await self._settle_down(self.timeout_s):
            return
        cut = [run for record in self._serving for run in record.runs if not run.admission.settled]
        for run in cut:
            run.cut_short()
        log.warning("drain time ran out: %d requests cut short, %d runs among them", self.in_flight, len(cut))
        if not await self._settle_down(CUT_GRACE_S):
            log.warning("%d requests still in flight after the cut; the server stops them", self.in_flight)

    async def _settle_down(self, seconds: float) -> bool:
        """Whether every request in flight ended within `seconds`."""
        deadline = time.monotonic() + seconds
        while self._serving and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return not self._serving

    def serving(self, record: RequestRecord) -> None:
        self._serving.add(record)

    def served(self, record: RequestRecord) -> None:
        self._serving.discard(record)


class DrainGate:
    """Counts the requests in flight for the drain and, once it has begun, refuses new ones with
    a 503 in the caller's dialect. Sits inside `MeteredRequests`, whose record it keeps."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            refusal = ApiError(ErrorKind.SHUTTING_DOWN, "This server is shutting down; send the request again.",
                               headers={"retry-after": str(RETRY_AFTER_S), "connection": "close"})
            await response_for(Request(scope), refusal)(scope, receive, send)
            return
        record = current_record() or RequestRecord(scope)
        self.drain.serving(record)
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.served(record)
