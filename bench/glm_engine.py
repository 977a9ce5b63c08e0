"""What batching buys the native GLM engine: generated tokens/s of the engine with 1 and with 8
sequences in flight, against GLM's own sequential generation without batching
(`glmaas.model.glm_generate.fill_blanks`, one sequence at a time, the same KV-cache model code),
in one run.

Same checkpoint, same 8 prompts (continuations: `[CLS] prompt [gMASK]`, 12–16 prompt tokens),
greedy, `--max-tokens` per sequence, the blank's `[E]` banned in the engine so that every sequence
runs to its limit (the reference runs to its limit unless the model writes `[E]`: tokens are
counted, not assumed). The three contenders take turns for `--rounds` rounds; medians reported.

  sequential   fill_blanks on each prompt, one after another
  engine x1    the engine, one request at a time
  engine x8    the engine, all 8 requests at once (one forward pass per step for all 8)

tokens/s = tokens generated / wall time of the 8 sequences (prefill of the short prompts
included). Without --checkpoint, a GLM of the preset with random weights and a BPE trained on the
first 200 KB of Tiny Shakespeare is built in a temporary folder (weights do not change the cost of
a step).

    python bench/glm_engine.py [--checkpoint DIR] [--preset glm-tiny] [--threads 1] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from glmaas.engines.base import GenerationRequest, SamplingParams
from glmaas.engines.glm import GLMEngine
from glmaas.model.glm import GLM, GLMConfig
from glmaas.model.glm_checkpoint import load_checkpoint, save_checkpoint
from glmaas.model.glm_generate import SamplingParams as ReferenceSampling
from glmaas.model.glm_generate import fill_blanks
from glmaas.model.glm_tokenizer import train_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
PROMPTS = ["First Citizen: Before we proceed any further, hear me speak.",
           "ROMEO: But soft, what light through yonder window breaks?",
           "KING RICHARD III: Now is the winter of our discontent",
           "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
           "HAMLET: To be, or not to be, that is the question:",
           "MENENIUS: I tell you, friends, most charitable care",
           "PORTIA: The quality of mercy is not strain'd,",
           "LEAR: Blow, winds, and crack your cheeks! rage! blow!"]


def build_checkpoint(folder: Path, preset: str) -> Path:
    text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000]
    tokenizer = train_tokenizer([text], vocab_size=2048)
    torch.manual_seed(0)
    return save_checkpoint(folder, GLM(GLMConfig.from_name(preset, vocab_size=tokenizer.vocab_size)), tokenizer)


def sequential(checkpoint: Path, engine: GLMEngine, max_tokens: int) -> tuple[int, float]:
    """(tokens, seconds) of `fill_blanks` on each prompt in turn."""
    model, tokenizer, _ = load_checkpoint(checkpoint)
    parts = [engine.part_a(engine.tokenize(p))[0] for p in PROMPTS]
    start = time.perf_counter()
    tokens = 0
    for part_a in parts:
        pieces = fill_blanks(model, part_a, tokenizer.special, ReferenceSampling(max_new_tokens=max_tokens,
                                                                                 temperature=0))
        tokens += sum(len(p) + (len(p) < max_tokens) for p in pieces)  # an [E] it wrote counts too
    return tokens, time.perf_counter() - start


async def engine_run(engine: GLMEngine, max_tokens: int, concurrent: bool) -> tuple[int, float]:
    """(tokens, seconds) of the engine on the prompts, all at once or one at a time."""
    banned = {engine.special.eop: -100.0, engine.special.eod: -100.0}

    async def one(i: int, prompt: str) -> int:
        params = SamplingParams(max_tokens=max_tokens, temperature=0, logit_bias=banned)
        request = GenerationRequest(f"bench-{i}", tuple(engine.tokenize(prompt)), params)
        usage = None
        async for delta in engine.generate(request):
            usage = delta.usage or usage
        assert usage is not None
        return usage.completion_tokens

    start = time.perf_counter()
    if concurrent:
        counts = await asyncio.gather(*[one(i, p) for i, p in enumerate(PROMPTS)])
    else:
        counts = [await one(i, p) for i, p in enumerate(PROMPTS)]
    return sum(counts), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a GLM checkpoint folder (default: a random one)")
    parser.add_argument("--preset", default="glm-tiny", help="model preset of the random checkpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or build_checkpoint(Path(tmp), args.preset)
        engine = GLMEngine("bench", checkpoint, slots=len(PROMPTS), threads=args.threads)
        config = load_checkpoint(checkpoint)[0].config
        max_tokens = min(args.max_tokens, config.max_seq_len - 20)
        print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s); "
              f"GLM {config.n_layer}x{config.n_embd}, vocab {config.vocab_size}, {len(PROMPTS)} prompts, "
              f"{max_tokens} tokens each, greedy, {args.rounds} rounds")
        print(f"# load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
        runs: dict[str, list[float]] = {"sequential": [], "engine x1": [], "engine x8": []}

        async def rounds() -> None:
            await engine_run(engine, 4, True)  # warm-up
            for _ in range(args.rounds):
                tokens, seconds = sequential(checkpoint, engine, max_tokens)
                runs["sequential"].append(tokens / seconds)
                tokens, seconds = await engine_run(engine, max_tokens, False)
                runs["engine x1"].append(tokens / seconds)
                tokens, seconds = await engine_run(engine, max_tokens, True)
                runs["engine x8"].append(tokens / seconds)
            await engine.close()

        asyncio.run(rounds())
    print(f"{'contender':<12} {'tokens/s':>10}   rounds")
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, values in runs.items():
        print(f"{name:<12} {medians[name]:>10.1f}   {' '.join(f'{v:.1f}' for v in values)}")
    print(f"engine x8 / sequential = {medians['engine x8'] / medians['sequential']:.2f}x   "
          f"engine x1 / sequential = {medians['engine x1'] / medians['sequential']:.2f}x   (target: x8 >= 3x)")
    load_after = os.getloadavg()
    print(f"# load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
          "(a figure taken beside other work measures the contention, not the engine)")


if __name__ == "__main__":
    main()
