"""The GLM engine: blanks filled as the one-sequence reference fills them, whatever else shares the
batch; exact usage; max_tokens over all blanks; cancellation within a step; the `glm:` spec."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from glmaas.engines.base import GenerationRequest, PromptTooLong, SamplingParams
from glmaas.engines.glm import GLMEngine
from glmaas.engines.registry import SpecError, build_engine
from glmaas.model.glm_checkpoint import load_checkpoint
from glmaas.model.glm_generate import SamplingParams as ReferenceSampling
from glmaas.model.glm_generate import fill_blanks
from tests.glm_checkpoints import random_checkpoint

PROMPTS = ["ROMEO: [MASK] is the [MASK] and Juliet", "Hello", "First Citizen: we are [MASK]",
           "a b c d e f g h [MASK] x y", "KING"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("glm"))


async def _fills(engine: GLMEngine, text: str, max_tokens: int, **sampling) -> tuple[list[list[int]], list]:
    """The tokens of each blank (ends left out) and the deltas."""
    fills: list[list[int]] = [[]]
    deltas = []
    request = GenerationRequest(text, tuple(engine.tokenize(text)), SamplingParams(max_tokens=max_tokens, **sampling))
    async for delta in engine.generate(request):
        deltas.append(delta)
        while len(fills) <= delta.blank:
            fills.append([])
        ends = (engine.special.eop, engine.special.eod)
        fills[delta.blank] += [t for t in delta.token_ids if t not in ends]
    return fills, deltas


def test_a_batch_fills_each_blank_as_the_one_sequence_reference_does(checkpoint: Path) -> None:
    """Five requests on three slots: they join and leave between steps, rows of different
    lengths share each forward pass, and each gets the reference's greedy tokens."""
    engine = GLMEngine("glm", checkpoint, slots=3)
    model, tokenizer, _ = load_checkpoint(checkpoint)

    async def run():  # type: ignore[no-untyped-def]
        try:
            return await asyncio.gather(*[_fills(engine, p, 12, temperature=0) for p in PROMPTS])
        finally:
            await engine.close()

    for text, (got, deltas) in zip(PROMPTS, asyncio.run(run())):
        part_a, blanks = engine.part_a(engine.tokenize(text))
        reference = fill_blanks(model, part_a, tokenizer.special, ReferenceSampling(max_new_tokens=12, temperature=0))
        flat = [t for fill in got for t in fill]
        # max_tokens bounds the blanks together, so the engine may stop inside the reference's output.
        assert flat == [t for fill in reference for t in fill][: len(flat)]
        assert part_a[0] == tokenizer.special.cls and len(blanks) == max(1, text.count("[MASK]"))
        assert deltas[-1].usage.prompt_tokens == len(engine.tokenize(text))
        assert deltas[-1].usage.completion_tokens == sum(len(d.token_ids) for d in deltas) <= 12


def test_max_tokens_bounds_all_blanks_together(checkpoint: Path) -> None:
    engine = GLMEngine("glm", checkpoint)
    try:
        fills, deltas = asyncio.run(_fills(engine, "[MASK] and [MASK] and [MASK]", 5, temperature=0))
    finally:
        asyncio.run(engine.close())
    assert sum(len(d.token_ids) for d in deltas) == deltas[-1].usage.completion_tokens == 5
    assert deltas[-1].finish_reason == "length"


def test_a_prompt_that_fills_the_window_is_refused(checkpoint: Path) -> None:
    engine = GLMEngine("glm", checkpoint)

    async def run() -> None:
        request = GenerationRequest("long", tuple([20] * 64), SamplingParams(max_tokens=4))
        with pytest.raises(PromptTooLong):
            async for _ in engine.generate(request):
                pass
        await engine.close()

    asyncio.run(run())


def test_a_closed_request_leaves_its_slot_within_a_step(checkpoint: Path) -> None:
    engine = GLMEngine("glm", checkpoint, slots=2)

    async def run() -> int:
        request = GenerationRequest("r", tuple(engine.tokenize("Hello")), SamplingParams(max_tokens=40))
        stream = engine.generate(request)
        await anext(stream)
        await stream.aclose()
        for _ in range(200):
            if engine.active_sequences() == 0:
                break
            await asyncio.sleep(0.01)
        left = engine.active_sequences()
        await engine.close()
        return left

    assert asyncio.run(run()) == 0


def test_the_glm_spec_loads_a_checkpoint_and_names_a_missing_one(checkpoint: Path, tmp_path: Path) -> None:
    engine = build_engine("g", f"glm:{checkpoint},slots=2,cls=false")
    assert isinstance(engine, GLMEngine) and engine.slots == 2
    assert engine.part_a(engine.tokenize("Hi"))[0][0] != engine.special.cls
    asyncio.run(engine.close())
    with pytest.raises(SpecError, match="no GLM checkpoint"):
        build_engine("g", f"glm:{tmp_path}")


def test_a_stop_string_ends_the_blank_it_appears_in(checkpoint: Path) -> None:
    engine = GLMEngine("glm", checkpoint)
    prompt = "ROMEO: [MASK] is the [MASK] and Juliet"
    no_specials = {t: -100.0 for t in range(8)}  # random weights: text, and no [E] to end a blank

    async def texts(**sampling) -> tuple[list[str], list]:  # type: ignore[no-untyped-def]
        out = ["", ""]
        deltas = []
        request = GenerationRequest("s", tuple(engine.tokenize(prompt)),
                                    SamplingParams(max_tokens=8, temperature=0, logit_bias=no_specials, **sampling))
        async for delta in engine.generate(request):
            deltas.append(delta)
            out[delta.blank] += delta.text
        return out, deltas

    async def run():  # type: ignore[no-untyped-def]
        try:
            free, _ = await texts()
            stop = free[0][2:4]
            return free, stop, await texts(stop=(stop,))
        finally:
            await engine.close()

    free, stop, (stopped, deltas) = asyncio.run(run())
    assert stop and stopped[0] == free[0][: free[0].index(stop)]
    # The second blank is filled after it (and ends at the stop string too, if it writes it).
    assert any(d.blank == 1 and d.token_ids for d in deltas)
    assert deltas[-1].usage.completion_tokens == sum(len(d.token_ids) for d in deltas) <= 8
