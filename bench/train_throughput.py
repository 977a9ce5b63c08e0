"""Training throughput: the GLM objective against causal LM on the same model and batch.

Prints, from one run: the measured float32 matmul FLOP/s of this machine (the ceiling), then per
objective the tokens/s of whole training steps (data path + masking + forward + backward +
AdamW), the achieved model FLOP/s and its fraction of the ceiling, and the GLM / CLM ratio.
Tokens are sequence positions processed (batch x seq_len, padding included): the compute that
every objective pays per step. Objectives are timed in alternating rounds so a neighbour's load
on a shared CPU hits them alike.

    python bench/train_throughput.py [--model glm-tiny] [--batch-size 16] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from glmaas.model.glm import GLM, GLMConfig
from glmaas.model.glm_tokenizer import SpecialIds
from glmaas.training.data import get_batch
from glmaas.training.evaluate import forward_batch, to_tensors
from glmaas.training.objectives import make_objective


class RandomShards:
    """Stands in for TokenShards: a random token stream held in memory."""

    def __init__(self, vocab_size: int, n: int = 1 << 20, seed: int = 0):
        self.tokens = np.random.default_rng(seed).integers(8, vocab_size, size=n)

    def window(self, rng: np.random.Generator, n: int) -> np.ndarray:
        start = int(rng.integers(0, len(self.tokens) - n))
        return self.tokens[start : start + n]


def matmul_ceiling(sizes=(256, 512, 1024), seconds: float = 0.5) -> tuple[float, int]:
    """Best float32 torch.mm FLOP/s over a few square sizes."""
    best, best_n = 0.0, 0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            reps += 1
        flops = 2 * n**3 * reps / (time.perf_counter() - t0)
        if flops > best:
            best, best_n = flops, n
    return best, best_n


def flops_per_token(cfg: GLMConfig, n_params: int) -> float:
    """6N for the matmuls (forward + backward) plus attention scores (nanoGPT's estimate)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.max_seq_len


def make_step(model, optimizer, shards, objective, seq_len: int, batch_size: int, pad: int):
    step = [0]

    def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        batch = to_tensors(get_batch(shards, objective, seq_len, 0, step[0], range(batch_size), pad))
        t1 = time.perf_counter()
        _, loss = forward_batch(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step[0] += 1
        return time.perf_counter() - t0, t1 - t0

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="glm-tiny")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GLMConfig.from_name(args.model, vocab_size=args.vocab_size, max_seq_len=args.seq_len)
    ids = SpecialIds()
    shards = RandomShards(args.vocab_size)
    ceiling, ceiling_n = matmul_ceiling()
    n_params = GLM(cfg).num_params() - 2 * (cfg.max_seq_len + 1) * cfg.n_embd  # position tables are lookups
    fpt = flops_per_token(cfg, n_params)
    arms = ["clm", "glm", "glm-token"]
    steps, times, data_times = {}, {a: [] for a in arms}, {a: [] for a in arms}
    for arm in arms:
        torch.manual_seed(0)
        model = GLM(cfg)
        model.train()
        opt = model.configure_optimizer(1e-3, 0.1)
        steps[arm] = make_step(model, opt, shards, make_objective(arm, ids, args.vocab_size), args.seq_len, args.batch_size, ids.pad)
        steps[arm]()  # warm-up
    for _ in range(args.rounds):
        for arm in arms:
            for _ in range(args.steps_per_round):
                total, data = steps[arm]()
                times[arm].append(total)
                data_times[arm].append(data)
    tokens = args.batch_size * args.seq_len
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")  # fmt: skip
    print(f"model: {args.model} ({n_params:,} params w/o position tables), vocab {args.vocab_size}, "
          f"batch {args.batch_size} x seq {args.seq_len} = {tokens} tokens/step, float32")  # fmt: skip
    print(f"matmul ceiling: {ceiling / 1e9:.1f} GFLOP/s (float32 torch.mm, {ceiling_n}x{ceiling_n})")
    print(f"{'objective':<10} {'step ms':>8} {'data ms':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'of ceiling':>10}")
    rate = {}
    for arm in arms:
        step_s = float(np.median(times[arm]))
        rate[arm] = tokens / step_s
        achieved = fpt * rate[arm]
        print(f"{arm:<10} {step_s * 1e3:8.1f} {np.median(data_times[arm]) * 1e3:8.2f} {rate[arm]:9.0f} "
              f"{achieved / 1e9:8.2f} {achieved / ceiling:10.1%}")  # fmt: skip
    for arm in ("glm", "glm-token"):
        print(f"{arm} / clm tokens/s: {rate[arm] / rate['clm']:.3f}  (extra cost of the GLM path: {rate['clm'] / rate[arm] - 1:+.1%})")


if __name__ == "__main__":
    main()
