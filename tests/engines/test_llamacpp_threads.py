"""The llama.cpp engine's thread count: `threads=auto` by default, a fixed `threads=N` on request,
and outputs that do not depend on it, even when it changes between the steps of a sequence."""

from __future__ import annotations

import asyncio

import pytest

from glmaas.engines.base import Delta, EngineError, GenerationRequest, SamplingParams
from glmaas.engines.registry import default_model_path

llamacpp = pytest.importorskip("glmaas.engines.llamacpp")
from glmaas.engines.llamacpp_batch import usable_cores  # noqa: E402

SMALL = {"slots": "4", "ctx": "256", "chunk": "32"}
TOPICS = ("a fox", "the sea", "a clock", "bread")


class EveryStep:
    """Stands in for the tuner: one thread, then two, then one... a different count every step."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def choose(self, tokens: int) -> int:
        return 2 if self.seen and self.seen[-1] == 1 else 1

    def observe(self, threads: int, tokens: int, seconds: float) -> None:
        self.seen.append(threads)


def engine(**options: str):
    return llamacpp.LlamaCppEngine.from_spec("smollm2", default_model_path(), {**SMALL, **options})


def outputs(eng) -> list[list[int]]:
    """Four greedy sequences and one seeded one, decoded together (prompts fed in chunks beside
    the others' decoding), as token ids."""
    def chat(text: str) -> tuple[int, ...]:
        return tuple(eng.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"))

    async def collect(prompt: tuple[int, ...], params: SamplingParams) -> list[int]:
        deltas: list[Delta] = [d async for d in eng.generate(GenerationRequest("t", prompt, params))]
        return [t for d in deltas for t in d.token_ids]

    async def together() -> list[list[int]]:
        greedy = [collect(chat(f"Write a short story about {t}."), SamplingParams(12, temperature=0.0))
                  for t in TOPICS]
        seeded = collect(chat("Write a poem about rain."), SamplingParams(12, temperature=0.9, top_p=0.9, seed=7))
        return await asyncio.gather(*greedy, seeded)

    return asyncio.run(together())


# Two fixed threads are slow on shared cores (the reason for `auto`): only the default layout
# runs them; the shared cache compares one thread with a count that changes every step.
@pytest.mark.parametrize(("cells", "counts"), [("0", ("1", "2", "auto")), ("2048", ("1", "auto"))],
                         ids=["region-per-slot", "shared-cache"])
def test_outputs_are_the_same_with_one_two_or_changing_threads(cells: str, counts: tuple[str, ...]) -> None:
    results, switching = [], EveryStep()
    for threads in counts:
        eng = engine(threads=threads, cells=cells)
        try:
            if threads == "auto":
                eng._loop.tuner = switching
            results.append(outputs(eng))
        finally:
            asyncio.run(eng.close())
    assert {1, 2} <= set(switching.seen)  # the count did change between steps
    assert all(r == results[0] for r in results[1:])


def test_threads_are_chosen_step_by_step_by_default() -> None:
    eng = engine()
    try:
        assert eng._loop.tuner is not None
        assert eng.load().threads == 1  # it starts with one thread
        outputs(eng)
        assert 1 <= eng.load().threads <= usable_cores()
    finally:
        asyncio.run(eng.close())


def test_a_fixed_thread_count_is_kept() -> None:
    eng = engine(threads="1")
    try:
        outputs(eng)
        assert eng._loop.tuner is None and eng.load().threads == 1
    finally:
        asyncio.run(eng.close())


@pytest.mark.parametrize("threads", ["0", "two", "-1"])
def test_a_thread_count_that_is_neither_a_number_nor_auto_is_refused(threads: str) -> None:
    with pytest.raises(EngineError, match="threads"):
        engine(threads=threads)
