"""uvicorn's server with the drain before its shutdown (see `drain`)."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import uvicorn

from glmaas.api.operations.drain import Drain

# After the drain, how long uvicorn's own shutdown waits for connections before it cancels them.
DRAIN_AFTERMATH_S = 5.0


class DrainingServer(uvicorn.Server):
    """The first SIGTERM starts the drain, and uvicorn stops (listeners closed, connections
    finished, the app's shutdown run) only once it is over. SIGINT, or a second signal, stops at
    once, as uvicorn does."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if sig != signal.SIGTERM or self.drain.draining or loop is None:
            super().handle_exit(sig, frame)
            return
        # Not recorded as a captured signal: uvicorn would raise it again once stopped, and the
        # process would end by SIGTERM instead of exiting 0 after its drain.
        self.drain.begin()  # readiness fails from this instant
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_stop()))

    async def _drain_then_stop(self) -> None:
        try:
            await self.drain.run()
        finally:
            self.should_exit = True
