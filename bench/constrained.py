"""What a JSON-schema constraint costs: decode tokens/s of glmaas with `response_format:
json_schema` against glmaas unconstrained, and against llama-cpp-python's server with its own
`response_format` (the schema turned into a GBNF grammar), on the default model, in one run.

Same prompts (story requests of `--input-words` words; the schema asks for a title and a story
longer than max_tokens allows, so constrained replies run exactly as long as free ones), same max_tokens, temperature 0,
streamed, at each `--concurrency`. The three contenders take turns in short alternating rounds, so
a change in the machine's background load falls on all of them alike. Prints each contender's
figures and the ratios the issue sets as targets:

  constrained / unconstrained glmaas        ≥ 0.90 at every concurrency
  glmaas constrained / llama_cpp.server     ≥ 1.0 at concurrency 1, ≥ 2 at 8

  decode tok/s   completion tokens / wall time of the round (all streams together)
  per stream     1000 / median time per output token after the first

    python bench/constrained.py --threads 1                         # the figures
    python bench/constrained.py --threads 1 --concurrency 1 --rounds 1 --prompts-per-round 1 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace

from glmaas.benchmarks.serve import BenchConfig, RequestResult, run_requests, summarize
from glmaas.benchmarks.servers import Server, glmaas_server, llama_cpp_server
from glmaas.engines.registry import default_model_path

SCHEMA = {
    "type": "object",
    # The story's minLength outlasts max_tokens, so every reply, constrained or not, runs to max_tokens
    # and all three contenders decode the same number of tokens (without it the small model closes
    # the JSON after a sentence and the figures would compare prefill, not decode).
    "properties": {"title": {"type": "string", "maxLength": 80}, "story": {"type": "string", "minLength": 2000}},
    "required": ["title", "story"],
    "additionalProperties": False,
}
GLMAAS_FORMAT = {"type": "json_schema", "json_schema": {"name": "story", "schema": SCHEMA, "strict": True}}
LLAMA_CPP_FORMAT = {"type": "json_object", "schema": SCHEMA}  # llama-cpp-python's form of it


def contenders(glmaas: Server, peer: Server | None) -> list[tuple[str, Server, dict]]:
    out = [("glmaas", glmaas, {}), ("glmaas json_schema", glmaas, {"response_format": GLMAAS_FORMAT})]
    if peer is not None:
        out.append(("llama_cpp.server GBNF", peer, {"response_format": LLAMA_CPP_FORMAT}))
    return out


def run_level(entries: list[tuple[str, Server, dict]], base: BenchConfig, concurrency: int, prompts: int,
              rounds: int) -> dict[str, dict]:
    """Every contender at one concurrency, in alternating rounds; figures over all its rounds."""
    results: dict[str, list[RequestResult]] = {name: [] for name, _, _ in entries}
    seconds = dict.fromkeys(results, 0.0)
    for _ in range(rounds):
        for name, server, extra in entries:
            config = replace(base, base_url=server.base_url, api_key=server.api_key, model=server.model,
                             concurrency=concurrency, num_prompts=prompts, extra_body=extra)
            got, took = asyncio.run(run_requests(config))
            results[name] += got
            seconds[name] += took
    out = {}
    for name, got in results.items():
        s = summarize(got, seconds[name], {})
        tpot = s["tpot_ms"].get("p50") if s["tpot_ms"] else None
        out[name] = {"decode_tok_s": s["output_throughput"], "per_stream_tok_s": 1000 / tpot if tpot else None,
                     "completed": s["completed"], "failed": s["failed"], "tokens": s["total_output_tokens"],
                     "first_error": s.get("first_error")}
        f = out[name]
        per_stream = f"{f['per_stream_tok_s']:7.1f}" if f["per_stream_tok_s"] else "      -"
        print(f"  c={concurrency:<2} {name:<24} {f['decode_tok_s']:8.1f} tok/s  per stream {per_stream} tok/s  "
              f"{f['completed']} ok {f['failed']} failed, {f['tokens']} tokens"
              + (f"  first error: {f['first_error']}" if f["first_error"] else ""), flush=True)
    return out


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts-per-round", type=int, default=8, help="raised to the concurrency")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--input-words", type=int, default=24)
    parser.add_argument("--slots", type=int, default=8, help="glmaas engine slots")
    parser.add_argument("--skip-peer", action="store_true", help="leave out llama_cpp.server")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()

    model = default_model_path()
    base = BenchConfig(base_url="", model="", max_tokens=args.max_tokens, input_words=args.input_words,
                       temperature=0.0)
    print(f"default model {model.name}; threads {args.threads}; max_tokens {args.max_tokens}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    figures: dict[int, dict[str, dict]] = {}
    with glmaas_server(model, f"threads={args.threads},slots={args.slots}") as glmaas:
        peer_cm = llama_cpp_server(model, args.threads) if not args.skip_peer else None
        peer = peer_cm.__enter__() if peer_cm else None
        try:
            entries = contenders(glmaas, peer)
            for c in args.concurrency:
                figures[c] = run_level(entries, base, c, max(c, args.prompts_per_round), args.rounds)
        finally:
            if peer_cm:
                peer_cm.__exit__(None, None, None)
    print(f"load average after {os.getloadavg()[0]:.1f}")
    for c, f in figures.items():
        free, constrained = f["glmaas"]["decode_tok_s"], f["glmaas json_schema"]["decode_tok_s"]
        line = f"c={c}: constrained / unconstrained {ratio(constrained, free)} (target ≥ 0.90)"
        if "llama_cpp.server GBNF" in f:
            target = "1.0" if c == 1 else "2"
            line += (f"; glmaas json_schema / llama_cpp.server GBNF "
                     f"{ratio(constrained, f['llama_cpp.server GBNF']['decode_tok_s'])} (target ≥ {target})")
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "figures": figures}, fh, indent=2)
    failed = sum(x["failed"] for f in figures.values() for x in f.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
