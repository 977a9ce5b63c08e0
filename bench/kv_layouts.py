"""What a decode step costs in each KV cache layout of the llama.cpp engine, on the default model.

16 sequences of --prompt tokens are prefilled, then --steps decode steps of one token each are
timed, in CPU time of one thread: a figure that a busy neighbour disturbs little, unlike wall
time. Layouts, measured in alternating rounds:

  per-slot 16x2048      a region of 2048 cells per sequence (`cells=0`), plain attention
  shared 8192 + flash   one cache of 8192 cells (the default), flash attention
  shared 8192, plain    the same without flash attention: every sequence's attention multiplies
                        through all occupied cells, the cost vLLM's paged design avoids
  per-slot + flash      a region per sequence with flash attention

    python bench/kv_layouts.py [--prompt 160] [--steps 12] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import time

import llama_cpp
import numpy as np

from glmaas.engines.llamacpp import load_model, tokenize_text
from glmaas.engines.registry import default_model_path

SEQUENCES = 16
LAYOUTS = (  # name, cells, shared, flash attention
    ("per-slot 16x2048, plain attention", SEQUENCES * 2048, False, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED),
    ("shared 8192, flash attention", 8192, True, llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED),
    ("shared 8192, plain attention", 8192, True, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED),
    ("per-slot 16x2048, flash attention", SEQUENCES * 2048, False, llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED),
)


def step_cpu_ms(model, prompts: list[list[int]], cells: int, shared: bool, flash: int, steps: int) -> float:  # type: ignore[no-untyped-def]
    """CPU milliseconds of one decode step of all sequences (greedy), after their prefill."""
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    params = llama_cpp.llama_context_default_params()
    params.n_seq_max, params.n_ctx, params.kv_unified, params.flash_attn_type = len(prompts), cells, shared, flash
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = 1
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(items: list[tuple[int, int, int, bool]]) -> None:
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(items)
        assert llama_cpp.llama_decode(ctx, batch) == 0

    fed = [(t, i, s, i == len(p) - 1) for s, p in enumerate(prompts) for i, t in enumerate(p)]
    for k in range(0, len(fed), 512):
        decode(fed[k : k + 512])
    pos, last = [len(p) for p in prompts], [1] * len(prompts)
    start = time.process_time()
    for _ in range(steps):
        decode([(last[s], pos[s], s, True) for s in range(len(prompts))])
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(len(prompts), n_vocab))
        last, pos = [int(x) for x in rows.argmax(1)], [p + 1 for p in pos]
    ms = (time.process_time() - start) / steps * 1000
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=160, help="tokens per sequence before the timed steps")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model = load_model("kv", default_model_path())
    vocab = llama_cpp.llama_model_get_vocab(model)
    text = "Request {0} tells a long story about the sea. " * 60
    prompts = [tokenize_text(vocab, text.format(s), special=False)[: args.prompt] for s in range(SEQUENCES)]
    figures: dict[str, list[float]] = {name: [] for name, *_ in LAYOUTS}
    for _ in range(args.rounds):
        for name, cells, shared, flash in LAYOUTS:
            figures[name].append(step_cpu_ms(model, prompts, cells, shared, flash, args.steps))
    print(f"{SEQUENCES} sequences at ~{args.prompt} tokens, 1 thread, CPU ms per decode step "
          f"(per round); load average {os.getloadavg()[0]:.2f}")
    for name, values in figures.items():
        print(f"  {name:36} " + "  ".join(f"{v:6.1f}" for v in values))
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
