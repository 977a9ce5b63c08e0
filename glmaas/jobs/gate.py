"""Interactive traffic first: how many engine slots background work may take.

A background line starts on a model only while (a) the lines running on it stay within
`share` of the engine's slots (at least one), and (b) a slot is free of every request this
replica has admitted, interactive or not. So background work fills idle slots and never queues
ahead of an interactive request; lines already running finish, and when interactive requests
take the free slots, no new line starts until one is free again.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

# Engines that do not say how many sequences they decode together are taken to have this many.
DEFAULT_SLOTS = 4
WAIT_S = 0.05


class SlotGate:
    def __init__(self, share: float, slots_of: Callable[[str], int | None], open_by_model: Counter[str]) -> None:
        self.share = share
        self._slots_of = slots_of
        self._open = open_by_model  # admitted and unsettled requests of this replica, by model
        self.running: Counter[str] = Counter()

    def cap(self, model: str) -> int:
        """The most background lines that may run on `model` at once."""
        return max(1, math.floor(self.share * self.slots(model)))

    def slots(self, model: str) -> int:
        return self._slots_of(model) or DEFAULT_SLOTS

    def may_start(self, model: str) -> bool:
        return self.running[model] < self.cap(model) and self._open[model] < self.slots(model)

    @asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        """Wait until a background line may start on `model`, and hold its place while it runs."""
        while not self.may_start(model):
            await asyncio.sleep(WAIT_S)
        self.running[model] += 1
        try:
            yield
        finally:
            self.running[model] -= 1
