"""The llama.cpp engine on the real default model (SmolLM2-135M-Instruct, Q4_1).

One engine for the module (4 slots, 256-token slots, 32-token prefill chunks, so that prompts here
are prefilled over several steps); outputs are kept short so the file stays fast on two cores. One
thread: when the cores are shared with other work, llama.cpp's spinning thread barrier makes two
threads several times slower than one.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from glmaas.engines.base import (
    Delta,
    EngineError,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
)
from glmaas.engines.registry import default_model_path

llamacpp = pytest.importorskip("glmaas.engines.llamacpp")

SLOTS = 4


# Both KV cache layouts: a shared cache (its cells for four full contexts) and the default region
# per slot (`cells=0`).
@pytest.fixture(scope="module", params=["1024", "0"], ids=["shared-cache", "region-per-slot"])
def engine(request: pytest.FixtureRequest):
    eng = llamacpp.LlamaCppEngine.from_spec(
        "smollm2", default_model_path(),
        {"slots": str(SLOTS), "ctx": "256", "cells": request.param, "chunk": "32", "threads": "1"},
    )
    yield eng
    asyncio.run(eng.close())


# A sequence's sums in the shared cache follow how full the cache is (llamacpp_batch.py), so
# exact agreement between batched and lone decoding is a property of a region per slot only.
own_regions = pytest.mark.parametrize("engine", ["0"], indirect=True, ids=["region-per-slot"])


def chat(engine, text: str) -> list[int]:
    return engine.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


async def collect(engine, prompt: list[int], **sampling) -> list[Delta]:
    sampling.setdefault("temperature", 0.0)
    request = GenerationRequest("t", tuple(prompt), SamplingParams(**sampling))
    return [d async for d in engine.generate(request)]


def generate(engine, prompt: list[int], **sampling) -> list[Delta]:
    return asyncio.run(collect(engine, prompt, **sampling))


def token_ids(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def test_tokenize_detokenize_round_trip_with_chinese(engine) -> None:
    s = "Hello, world! 你好，世界。Ünïcödé ✓"
    ids = engine.tokenize(s)
    assert engine.detokenize(ids) == s


def test_special_tokens_are_parsed_only_when_asked(engine) -> None:
    assert engine.tokenize("<|im_start|>user") == [1, engine.tokenize("user")[0]]
    assert 1 not in engine.tokenize("<|im_start|>user", special=False)


def test_model_info_comes_from_the_gguf(engine) -> None:
    info = engine.info
    assert "<|im_start|>" in (info.chat_template or "")
    assert (info.bos_token, info.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert info.context_length == 256


def test_greedy_is_deterministic(engine) -> None:
    prompt = chat(engine, "Name three colours.")
    first, second = generate(engine, prompt, max_tokens=8), generate(engine, prompt, max_tokens=8)
    assert token_ids(first) == token_ids(second)
    assert text(first) == text(second) != ""


def test_max_tokens_ends_with_length_and_exact_usage(engine) -> None:
    prompt = chat(engine, "Write a long story about a dragon.")
    deltas = generate(engine, prompt, max_tokens=5)
    last = deltas[-1]
    assert last.finish_reason == "length"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(prompt), 5)
    assert len(token_ids(deltas)) == 5
    assert all(d.finish_reason is None for d in deltas[:-1])


def test_end_of_generation_token_stops_with_stop(engine) -> None:
    deltas = generate(engine, chat(engine, "Answer with one word: is fire hot?"), max_tokens=40)
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage.completion_tokens == len(token_ids(deltas)) < 40
    assert "<|im_end|>" not in text(deltas)


def test_stop_string_cuts_the_text_before_it(engine) -> None:
    prompt = chat(engine, "Write a long story about a dragon.")
    full = text(generate(engine, prompt, max_tokens=12))
    stop = full[len(full) // 2 :][:4]
    assert stop.strip()
    deltas = generate(engine, prompt, max_tokens=12, stop=(stop,))
    assert deltas[-1].finish_reason == "stop"
    assert text(deltas) == full[: full.index(stop)]


def test_prompt_too_long_raises_before_yielding(engine) -> None:
    prompt = [42] * engine.info.context_length

    async def first() -> None:
        await anext(aiter(engine.generate(GenerationRequest("t", tuple(prompt), SamplingParams(4)))))

    with pytest.raises(PromptTooLong):
        asyncio.run(first())


def test_token_ids_outside_the_vocabulary_are_refused_before_decoding(engine) -> None:
    async def first() -> None:
        request = GenerationRequest("t", (1, 10**7), SamplingParams(4))
        await anext(aiter(engine.generate(request)))

    with pytest.raises(EngineError):
        asyncio.run(first())


def test_closing_the_stream_frees_the_slot_within_a_step(engine) -> None:
    async def scenario() -> float:
        request = GenerationRequest(
            "t", tuple(chat(engine, "Count to one hundred.")), SamplingParams(200, temperature=0.0)
        )
        stream = engine.generate(request)
        await anext(stream)
        await anext(stream)
        assert engine.active_sequences() == 1
        closed = time.perf_counter()
        await stream.aclose()
        while engine.active_sequences():
            await asyncio.sleep(0.002)
        return time.perf_counter() - closed

    # One decode step of this model is a few milliseconds; 0.5 s leaves room for a loaded machine.
    assert asyncio.run(scenario()) < 0.5


def test_cancelled_task_frees_its_slot(engine) -> None:
    async def scenario() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(
                GenerationRequest("t", tuple(chat(engine, "Count to one hundred.")), SamplingParams(200, temperature=0.0))
            ):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(250):
            if engine.active_sequences() == 0:
                return
            await asyncio.sleep(0.002)
        raise AssertionError("the cancelled sequence still holds its slot")

    asyncio.run(scenario())


def test_more_requests_than_slots_all_finish_with_exact_usage(engine) -> None:
    prompts = [chat(engine, f"Tell me a fact about the number {i}.") for i in range(SLOTS + 2)]

    async def scenario() -> list[list[Delta]]:
        return await asyncio.gather(*(collect(engine, p, max_tokens=4) for p in prompts))

    for prompt, deltas in zip(prompts, asyncio.run(scenario())):
        assert deltas[-1].finish_reason == "length"
        assert deltas[-1].usage.prompt_tokens == len(prompt)
        assert deltas[-1].usage.completion_tokens == len(token_ids(deltas)) == 4


def test_prompt_prefix_is_reused_and_reported_as_cached(engine) -> None:
    # Longer than one prefill chunk, and unlike any other prompt in this file.
    system = "You are a careful assistant who answers about lighthouses. " * 6
    head = engine.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n")
    first_prompt = head + chat(engine, "How tall is the tallest lighthouse?")
    first = generate(engine, first_prompt, max_tokens=4)
    assert first[-1].usage.cached_prompt_tokens <= 1  # the `<|im_start|>` all prompts here share

    again = generate(engine, first_prompt, max_tokens=4)
    # All but the last prompt token: its logits are needed for the first new token.
    assert again[-1].usage.cached_prompt_tokens == len(first_prompt) - 1
    assert token_ids(again) == token_ids(first)

    follow_up = head + chat(engine, "Who keeps a lighthouse?")
    reused = generate(engine, follow_up, max_tokens=4)
    shared = next(i for i, (a, b) in enumerate(zip(first_prompt, follow_up)) if a != b)
    assert reused[-1].usage.cached_prompt_tokens == shared >= len(head)


def test_a_prefix_held_by_a_busy_slot_is_copied_not_recomputed(engine) -> None:
    system = "You answer questions about rivers, deltas and the sea. " * 6
    head = engine.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n")
    question = head + chat(engine, "Why do rivers bend?")
    reference = generate(engine, question, max_tokens=6)  # computed from scratch

    async def scenario() -> list[Delta]:
        # Another request on the same system prompt takes the slot that holds it and keeps it busy.
        busy = engine.generate(
            GenerationRequest("busy", tuple(head + chat(engine, "Name a delta.")), SamplingParams(40, temperature=0.0))
        )
        await anext(busy)
        try:
            return await collect(engine, question, max_tokens=6)
        finally:
            await busy.aclose()

    copied = asyncio.run(scenario())
    shared = next(i for i, (a, b) in enumerate(zip(question, head + chat(engine, "Name a delta."))) if a != b)
    assert copied[-1].usage.cached_prompt_tokens == shared >= len(head)
    assert token_ids(copied) == token_ids(reference)


@own_regions
def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(engine) -> None:
    assert not engine._loop.shared_cache
    prompt = chat(engine, "Write a poem about rain.")
    params = {"max_tokens": 8, "temperature": 0.9, "top_p": 0.9, "seed": 1234}
    alone = token_ids(generate(engine, prompt, **params))

    async def with_others() -> list[list[Delta]]:
        other = chat(engine, "Write a poem about snow.")
        return await asyncio.gather(
            collect(engine, prompt, **params), collect(engine, other, max_tokens=8, temperature=1.0)
        )

    assert token_ids(asyncio.run(with_others())[0]) == alone


@own_regions
def test_batched_outputs_match_unbatched_at_temperature_0(engine) -> None:
    assert not engine._loop.shared_cache
    # Measured (docs/performance.md): on this llama.cpp build every greedy token of a sequence
    # decoded beside others equals the token it gets alone, so the test asserts exact equality.
    prompts = [chat(engine, f"Write a short story about {t}.") for t in ("a fox", "the sea", "a clock", "bread")]
    alone = [token_ids(generate(engine, p, max_tokens=12)) for p in prompts]

    async def together() -> list[list[Delta]]:
        return await asyncio.gather(*(collect(engine, p, max_tokens=12) for p in prompts))

    assert [token_ids(d) for d in asyncio.run(together())] == alone


def test_load_reports_busy_slots_and_the_kv_cells_a_request_leaves(engine) -> None:
    async def scenario() -> tuple[object, object]:
        prompt = chat(engine, "Name three colours.")
        stream = engine.generate(GenerationRequest("t", tuple(prompt), SamplingParams(50, temperature=0.0)))
        await anext(stream)
        during = engine.load()
        await stream.aclose()
        while engine.active_sequences():
            await asyncio.sleep(0.002)
        return during, engine.load()

    during, after = asyncio.run(scenario())
    assert (during.busy, during.waiting, during.slots) == (1, 0, SLOTS)
    assert during.kv_cells == SLOTS * 256 and during.kv_cells_used >= len(chat(engine, "Name three colours."))
    # The slot is free again, and keeps its cells for the next request's shared prefix.
    assert after.busy == 0 and after.kv_cells_used >= during.kv_cells_used


def test_fill_in_the_middle_uses_the_tokens_the_gguf_names(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2's GGUF names none, so there is no middle to write; a GGUF that names them gets
    `<fim_prefix> prefix <fim_suffix> suffix <fim_middle>` (ids stand in for a FIM model's)."""
    prefix, suffix = engine.tokenize("def f(x):"), engine.tokenize("    return y")
    assert engine.infill_prompt(prefix, suffix) is None
    for name, token in (("llama_vocab_fim_pre", 1), ("llama_vocab_fim_suf", 2), ("llama_vocab_fim_mid", 3)):
        monkeypatch.setattr(llamacpp.llama_cpp, name, lambda _vocab, token=token: token)
    assert engine.infill_prompt(prefix, suffix) == [1, *prefix, 2, *suffix, 3]
