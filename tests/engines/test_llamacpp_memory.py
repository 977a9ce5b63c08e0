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


def test_the_reported_kv_cache_is_the_one_allocated() -> None:
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
    # The cache is written at creation, so it is resident; the rest is small working buffers.
    assert 0.95 * held.kv_bytes <= grown <= held.kv_bytes + 16 * 2**20
    assert held.model_bytes > 50 * 2**20


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
