"""The dynamic batcher and the GGUF embedding engine."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from glmaas.engines.base import EngineError
from glmaas.engines.embedding import DynamicBatcher, length_bucket
from glmaas.engines.registry import (
    ModelRegistry,
    SpecError,
    build_engine,
    default_embedding_folder,
    default_model_path,
)


class RecordingForward:
    """A forward pass that returns each row's token ids summed (in column 0) and its length
    (column 1), and records the shapes it was called with."""

    def __init__(self, delay: float = 0.0) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self.lock:
            self.shapes.append(ids.shape)
        time.sleep(self.delay)
        return np.stack([(ids * mask).sum(1), mask.sum(1)], axis=1).astype(np.float32)


def test_length_buckets_are_powers_of_two() -> None:
    assert [length_bucket(n) for n in (1, 16, 17, 100, 256)] == [16, 16, 32, 128, 256]


def test_concurrent_requests_share_one_forward_pass() -> None:
    forward = RecordingForward()
    batcher = DynamicBatcher(forward, window_s=0.02)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.embed([(i, i + 1, i + 2)]) for i in range(8)))

    results = asyncio.run(main())
    assert batcher.forward_passes == 1
    assert forward.shapes == [(8, 3)]
    # Each caller gets its own rows back.
    assert [r.tolist() for r in results] == [[[3 * i + 3, 3]] for i in range(8)]


def test_lengths_far_apart_run_in_separate_buckets() -> None:
    forward = RecordingForward()
    batcher = DynamicBatcher(forward, window_s=0.02)
    short, long = (7,) * 5, (7,) * 100

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(batcher.embed([short, long]), batcher.embed([short]))

    first, second = asyncio.run(main())
    assert sorted(forward.shapes) == [(1, 100), (2, 5)]  # padded to the longest in its bucket only
    assert first.tolist() == [[35, 5], [700, 100]] and second.tolist() == [[35, 5]]


def test_requests_arriving_during_a_pass_join_the_next() -> None:
    forward = RecordingForward(delay=0.2)
    batcher = DynamicBatcher(forward, window_s=0.005)

    async def main() -> None:
        first = asyncio.create_task(batcher.embed([(1,)]))
        await asyncio.sleep(0.05)  # the first pass is running
        await asyncio.gather(first, *(batcher.embed([(2,)]) for _ in range(6)))

    asyncio.run(main())
    assert forward.shapes == [(1, 1), (6, 1)]


def test_a_failed_pass_fails_its_callers_only() -> None:
    calls = {"n": 0}

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return np.zeros((len(ids), 2), dtype=np.float32)

    batcher = DynamicBatcher(forward, window_s=0.001)

    async def main() -> np.ndarray:
        with pytest.raises(EngineError):
            await batcher.embed([(1,)])
        return await batcher.embed([(1,)])

    assert asyncio.run(main()).shape == (1, 2)


def test_embedding_specs_are_checked_before_loading() -> None:
    with pytest.raises(SpecError, match="no sentence-transformers folder"):
        build_engine("e", "sentence:/no/such/folder")
    with pytest.raises(EngineError, match="unknown sentence options"):
        build_engine("e", f"sentence:{default_embedding_folder()},pooling=cls")
    with pytest.raises(SpecError, match="embedding is true or false"):
        build_engine("e", f"llamacpp:{default_model_path()},embedding=maybe")
    with pytest.raises(EngineError, match="pooling is one of"):
        build_engine("e", f"llamacpp:{default_model_path()},embedding=true,pooling=max")


@pytest.fixture(scope="module")
def gguf_embedder():  # type: ignore[no-untyped-def]
    registry = ModelRegistry({"smol-embed": build_engine(
        "smol-embed", f"llamacpp:{default_model_path()},embedding=true,pooling=mean,threads=2")})
    yield registry
    asyncio.run(registry.close())


def test_gguf_embedding_model_is_an_embedder(gguf_embedder: ModelRegistry) -> None:
    assert gguf_embedder.get("smol-embed") is None
    model = gguf_embedder.embedder("smol-embed")
    assert model is not None and model.dimensions == 576


def test_gguf_vectors_are_unit_length_and_independent_of_batching(gguf_embedder: ModelRegistry) -> None:
    model = gguf_embedder.embedder("smol-embed")
    texts = ["the cat sat on the mat", "a dog barked", "the cat sat on the mat"]
    framed = [model.frame(model.tokenize(t)) for t in texts]

    async def main() -> tuple[np.ndarray, np.ndarray]:
        return await model.embed(framed), await model.embed(framed[1:2])

    together, alone = asyncio.run(main())
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together[0], together[2], atol=1e-6)
    assert np.allclose(together[1], alone[0], atol=1e-4)
    assert float(together[0] @ together[1]) < 0.999  # different texts, different vectors


def test_gguf_pooling_choice_changes_the_vectors() -> None:
    path = default_model_path()
    vectors = []
    for pooling in ("mean", "last"):
        model = build_engine("m", f"llamacpp:{path},embedding=true,pooling={pooling},threads=2")
        vectors.append(asyncio.run(model.embed([model.frame(model.tokenize("hello there"))]))[0])
        asyncio.run(model.close())
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
