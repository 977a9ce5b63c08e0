"""How far greedy outputs decoded in a batch agree with the same requests decoded alone.

llama.cpp's kernels may round differently when a batch holds more tokens; this measures it on the
default model: each prompt alone (one request at a time, whole prompt in one chunk), then all of
them at once through one engine (prompts fed in `--chunk`-token pieces beside the others'
decoding), then all at once again (now served from the prefix cache):

    python -m glmaas.benchmarks.agreement [--sequences 16] [--max-tokens 128] [--chunk 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from glmaas.engines.base import GenerationRequest, SamplingParams
from glmaas.engines.llamacpp import LlamaCppEngine
from glmaas.engines.registry import default_model_path

TOPICS = ("a cat", "the sea", "a robot", "volcanoes", "bread", "the moon", "a train", "bees",
          "winter", "a violin", "paper", "a lighthouse", "rain", "chess", "a garden", "clocks")


async def greedy(engine: LlamaCppEngine, prompt: list[int], max_tokens: int) -> list[int]:
    request = GenerationRequest("agreement", tuple(prompt), SamplingParams(max_tokens, temperature=0.0))
    return [t async for d in engine.generate(request) for t in d.token_ids]


def compare(alone: list[list[int]], batched: list[list[int]]) -> str:
    """Identical sequences, and tokens that agree before each sequence's first divergence."""
    same = agreeing = total = 0
    divergences = []
    for a, b in zip(alone, batched):
        n = min(len(a), len(b))
        k = next((i for i in range(n) if a[i] != b[i]), n)
        agreeing += k
        total += max(len(a), len(b))
        same += a == b
        if a != b:
            divergences.append(k)
    return (f"identical sequences {same}/{len(alone)}, agreeing tokens {agreeing}/{total}"
            + (f", first divergence at {divergences}" if divergences else ""))


async def measure(sequences: int, max_tokens: int, chunk: int, threads: int, cells: int | None = None) -> None:
    path = default_model_path()
    options = {"slots": str(sequences), "ctx": "512", "threads": str(threads)}
    if cells is not None:
        options["cells"] = str(cells)
    engine = LlamaCppEngine.from_spec("agreement", path, {**options, "chunk": "512"})
    prompts = [
        engine.tokenize(f"<|im_start|>user\nWrite a short story about {t}.<|im_end|>\n<|im_start|>assistant\n")
        for t in (TOPICS * 4)[:sequences]
    ]
    alone = [await greedy(engine, p, max_tokens) for p in prompts]
    await engine.close()
    engine = LlamaCppEngine.from_spec("agreement", path, {**options, "chunk": str(chunk)})
    start = time.perf_counter()
    batched = await asyncio.gather(*(greedy(engine, p, max_tokens) for p in prompts))
    print(f"{sequences} at once, chunk {chunk}, {threads} threads: {compare(alone, batched)} "
          f"[{time.perf_counter() - start:.1f} s]")
    cached = await asyncio.gather(*(greedy(engine, p, max_tokens) for p in prompts))
    print(f"{sequences} at once again, prompts from the prefix cache: {compare(alone, cached)}")
    await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cells", type=int, help="KV cache cells (0: a region per slot; default: the engine's)")
    args = parser.parse_args()
    asyncio.run(measure(args.sequences, args.max_tokens, args.chunk, args.threads, args.cells))


if __name__ == "__main__":
    main()
