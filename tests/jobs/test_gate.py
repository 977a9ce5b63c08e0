"""The slot gate: background lines take at most their share of a model's slots, and only slots
no interactive request uses."""

from __future__ import annotations

import asyncio
from collections import Counter

from glmaas.jobs.gate import DEFAULT_SLOTS, SlotGate


def gate(share: float, slots: int | None, open_runs: Counter[str]) -> SlotGate:
    return SlotGate(share, lambda _model: slots, open_runs)


def test_share_caps_background_lines() -> None:
    open_runs: Counter[str] = Counter()
    g = gate(0.5, 8, open_runs)
    assert g.cap("m") == 4
    g.running["m"] = 4
    open_runs["m"] = 4
    assert not g.may_start("m")
    g.running["m"] = 3
    assert g.may_start("m")


def test_at_least_one_slot_and_a_default_for_engines_without_slots() -> None:
    assert gate(0.1, 2, Counter()).cap("m") == 1
    assert gate(1.0, None, Counter()).cap("m") == DEFAULT_SLOTS


def test_interactive_requests_come_first() -> None:
    open_runs: Counter[str] = Counter({"m": 8})  # every slot taken by interactive requests
    g = gate(0.5, 8, open_runs)
    assert not g.may_start("m")

    async def scenario() -> list[str]:
        order: list[str] = []

        async def background() -> None:
            async with g.slot("m"):
                order.append("background")

        async def interactive_ends() -> None:
            await asyncio.sleep(0.1)
            order.append("interactive done")
            open_runs["m"] -= 1

        await asyncio.gather(background(), interactive_ends())
        return order

    assert asyncio.run(scenario()) == ["interactive done", "background"]
    assert g.running["m"] == 0
