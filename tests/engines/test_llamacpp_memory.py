"""What the llama.cpp engine holds in memory: the KV cache it reports is the one it allocates, sized
by its `cells` option, and a request beyond one sequence's context is refused with a clear 400."""

from __future__ import annotations

import httpx
import pytest

from glmaas.engines import llamacpp
from glmaas.engines.llamacpp_batch import DecodeLoop, LoopConfig
from glmaas.engines.registry import default_model_path
from tests.inprocess import AppServer

# SmolLM2-135M: 30 layers, 3 KV heads of 64 dimensions, a key and a value in f16 each.
SMOLLM2_CELL_BYTES = 30 * 3 * 64 * 2 * 2


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def test_the_reported_kv_cache_is_the_one_allocated_and_resident_only_as_used() -> None:
    model = llamacpp.load_model("smollm2", default_model_path())
    vocab = llamacpp.llama_cpp.llama_model_get_vocab(model)
    try:
        before = _rss_bytes()
        loop = DecodeLoop(model, vocab, LoopConfig(slots=4, slot_context=256, chunk=32, threads=1, cells=4096))
        grown = _rss_bytes() - before
        held = loop.reservation
        loop.close()
    finally:
        llamacpp.llama_cpp.llama_model_free(model)
    assert (held.kv_cells, held.kv_bytes_per_cell) == (4096, SMOLLM2_CELL_BYTES)
    # llama.cpp writes zeros over the whole cache at creation; those pages are given back, so the
    # context costs small working buffers until sequences write their cells.
    assert held.kv_released_bytes >= 0.95 * held.kv_bytes
    assert grown <= 0.1 * held.kv_bytes + 8 * 2**20
    assert held.model_bytes > 50 * 2**20


def _engine_rss_and_outputs(monkeypatch: pytest.MonkeyPatch,
                            release: bool) -> tuple[int, int, int, list[list[int]]]:
    """(weights' bytes, resident growth after start, after three requests, their token ids)"""
    import asyncio

    from glmaas.engines import llamacpp_batch
    from glmaas.engines.base import GenerationRequest, SamplingParams

    if not release:
        monkeypatch.setattr(llamacpp_batch, "release_zero_pages", lambda before, min_bytes: 0)
    before = _rss_bytes()
    engine = llamacpp.LlamaCppEngine.from_spec("smollm2", default_model_path(), {"threads": "1", "slots": "4"})
    at_start = _rss_bytes() - before

    async def generate(text: str, **sampling: float) -> list[int]:
        prompt = engine.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
        request = GenerationRequest(text, tuple(prompt), SamplingParams(max_tokens=24, **sampling))
        return [t async for d in engine.generate(request) for t in d.token_ids]

    async def one_by_one() -> list[list[int]]:
        # One at a time, so that both runs make the same steps: a greedy sequence's tokens can
        # depend on what shares its batch (docs/performance.md, "Batched against unbatched
        # outputs"), and run together these three came out differently about one run in eight.
        return [await generate("Write a poem about rain.", temperature=0.0),
                await generate("Tell me about the sea.", temperature=0.9, seed=7),
                await generate("Count to twenty: " + "one two three " * 60, temperature=0.0)]

    outputs = asyncio.run(one_by_one())
    after = _rss_bytes() - before
    asyncio.run(engine.close())
    return engine.reservation.model_bytes, at_start, after, outputs


def test_the_default_region_per_slot_is_resident_as_used_with_the_same_outputs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    weights, at_start, after, outputs = _engine_rss_and_outputs(monkeypatch, release=True)
    region = 4 * llamacpp.DEFAULT_SLOT_CONTEXT * SMOLLM2_CELL_BYTES  # 4 slots x 2048 cells: 180 MiB
    # Weights (mapped from the file as they are read) and working buffers; not the 180 MiB cache.
    assert at_start < weights + 0.1 * region
    # Three sequences of ~40, ~40 and ~240 tokens write a few hundred cells: resident grows by
    # about their size (pages of ~10 cells of one layer's keys or values), not the regions'.
    assert after - at_start < 0.25 * region
    _, held_start, _, held_outputs = _engine_rss_and_outputs(monkeypatch, release=False)
    assert held_start > at_start + 0.9 * region  # the cache llama.cpp cleared is otherwise resident
    assert outputs == held_outputs and all(len(o) > 0 for o in outputs)


def test_the_default_reserves_a_region_per_slot_and_a_shared_cache_far_less() -> None:
    engine = llamacpp.LlamaCppEngine.from_spec("smollm2", default_model_path(), {"threads": "1"})
    shared = llamacpp.LlamaCppEngine.from_spec("smollm2", default_model_path(), {"threads": "1", "cells": "8192"})
    try:
        assert engine.info.context_length == shared.info.context_length == llamacpp.DEFAULT_SLOT_CONTEXT
        assert engine.reservation.kv_cells == engine.slots * llamacpp.DEFAULT_SLOT_CONTEXT
        assert shared.reservation.kv_cells == 8192 < engine.reservation.kv_cells
    finally:
        import asyncio

        asyncio.run(engine.close())
        asyncio.run(shared.close())


@pytest.fixture(scope="module")
def small_context(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    spec = f"llamacpp:{default_model_path()},threads=1,slots=2,ctx=64,cells=128"
    server = AppServer(tmp_path_factory.mktemp("small-context"), "--no-default-model", "--model", f"small={spec}")
    yield server.client(headers={"Authorization": f"Bearer {server.create_key()}"})
    server.stop()


def test_a_prompt_beyond_one_sequences_context_is_a_clear_400(small_context: httpx.Client) -> None:
    long = {"model": "small", "messages": [{"role": "user", "content": "tell me a story " * 40}]}
    r = small_context.post("/v1/chat/completions", json=long)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    short = {"model": "small", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert small_context.post("/v1/chat/completions", json=short).status_code == 200


def test_requests_beyond_the_shared_cache_wait_for_room(small_context: httpx.Client) -> None:
    # Two sequences that may each grow to the 64-token context do not fit 128 cells beside an
    # idle prefix: the second waits for room instead of failing the decode.
    body = {"model": "small", "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 40}

    def both() -> list[int]:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            return [r.status_code for r in pool.map(
                lambda _: small_context.post("/v1/chat/completions", json=body), range(3))]

    assert both() == [200, 200, 200]


def test_serve_tells_at_start_what_each_model_reserved() -> None:
    from types import SimpleNamespace

    from glmaas.engines.llamacpp_batch import Reservation
    from glmaas.server import reserved_memory

    held = {"lazy": Reservation(92 * 2**20, 32768, SMOLLM2_CELL_BYTES, kv_released_bytes=700 * 2**20),
            "eager": Reservation(92 * 2**20, 8192, SMOLLM2_CELL_BYTES)}
    registry = SimpleNamespace(models=lambda: [SimpleNamespace(model_id=m) for m in (*held, "mock")],
                               get=lambda m: SimpleNamespace(reservation=held[m]) if m in held else object())
    assert reserved_memory(registry) == [
        "lazy reserved 92 MiB of weights and 720 MiB of KV cache (32768 cells of 22.5 KiB, "
        "resident as sequences use them)",
        "eager reserved 92 MiB of weights and 180 MiB of KV cache (8192 cells of 22.5 KiB)",
    ]


def test_a_prefix_copied_between_regions_makes_only_its_cells_resident() -> None:
    import asyncio

    from glmaas.engines.base import GenerationRequest, SamplingParams

    engine = llamacpp.LlamaCppEngine.from_spec("smollm2", default_model_path(), {"threads": "1"})
    system = "You answer questions about rivers, deltas and the sea. " * 6

    async def ask(i: int) -> int:
        prompt = engine.tokenize(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                                 f"Question {i}: why?<|im_end|>\n<|im_start|>assistant\n")
        request = GenerationRequest(str(i), tuple(prompt), SamplingParams(max_tokens=16, temperature=0.0))
        return sum([d.usage.cached_prompt_tokens async for d in engine.generate(request) if d.usage])

    async def together() -> list[int]:
        return await asyncio.gather(*(ask(i) for i in range(engine.slots)))

    try:
        before = _rss_bytes()
        cached = asyncio.run(together())
        grown = _rss_bytes() - before
    finally:
        asyncio.run(engine.close())
    # The requests after the first find the system prompt in a busy slot and copy it; each of the
    # 16 regions then holds ~100 cells (~2 MiB), where a copy of whole regions made all 720 MiB resident.
    assert sum(1 for c in cached if c > 0) >= engine.slots // 2
    assert grown < 0.15 * engine.reservation.kv_bytes
