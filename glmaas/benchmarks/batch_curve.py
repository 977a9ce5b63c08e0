"""What batching buys on this machine: one llama.cpp decode step of 1, 2, 4, 8 and 16 sequences.

The ceiling of any batched server: each sequence holds 60 tokens, then each batch size decodes one
token per sequence, in alternating rounds, median step time reported:

    python -m glmaas.benchmarks.batch_curve [--threads 1] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp

from glmaas.engines.llamacpp import load_model
from glmaas.engines.registry import default_model_path

SIZES = (1, 2, 4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    model = load_model("smollm2", default_model_path())
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_seq_max = 1024 * max(SIZES), max(SIZES)
    cparams.n_batch = cparams.n_ubatch = 272
    cparams.n_threads = cparams.n_threads_batch = args.threads
    cparams.kv_unified = False
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(items: list[tuple[int, int, int, bool]]) -> float:
        for i, (tok, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(items)
        start = time.perf_counter()
        assert llama_cpp.llama_decode(ctx, batch) == 0
        return time.perf_counter() - start

    for s in range(max(SIZES)):
        decode([(100 + i + s, i, s, False) for i in range(60)])
    pos = [60] * max(SIZES)
    steps: dict[int, list[float]] = {n: [] for n in SIZES}
    for _ in range(args.rounds):
        for n in SIZES:
            steps[n].append(decode([(7, pos[s], s, True) for s in range(n)]))
            for s in range(n):
                pos[s] += 1
    for n in SIZES:
        ms = statistics.median(steps[n]) * 1000
        print(f"threads {args.threads}, {n:2d} sequences: step {ms:6.1f} ms, {n / ms * 1000:6.1f} tok/s")
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
