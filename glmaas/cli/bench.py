"""`glmaas bench serve`: load-test an OpenAI-compatible server with `glmaas.benchmarks.serve`.

The load generator (httpx, numpy, matplotlib) is imported when the command runs, not when the
parser is built.
"""

from __future__ import annotations

import argparse

from glmaas.config import DEFAULT_HOST, DEFAULT_PORT
from glmaas.engines.registry import DEFAULT_MODEL_ID

SLO_KEYS = ("ttft", "tpot", "e2e")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench serve` to the `glmaas` command."""
    bench = subparsers.add_parser("bench", help="benchmarks")
    kinds = bench.add_subparsers(dest="bench_command", required=True)
    serve = kinds.add_parser("serve", help="load-test an OpenAI-compatible server (streaming chat)")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)


def _slo(text: str) -> tuple[str, float]:
    """`KEY:MS`, e.g. `ttft:1000`: a latency objective for goodput."""
    key, sep, value = text.partition(":")
    if not sep or key not in SLO_KEYS:
        raise argparse.ArgumentTypeError(f"SLO {text!r} is not {'|'.join(SLO_KEYS)}:MILLISECONDS")
    return key, float(value)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bench serve`: where to send requests, how many, how fast, what to write."""
    parser.add_argument("--base-url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/v1",
                        help="up to and including /v1")
    parser.add_argument("--model", default=DEFAULT_MODEL_ID)
    parser.add_argument("--api-key", default="", help="sent as a Bearer token")
    parser.add_argument("--num-prompts", type=int, default=32, help="requests per level")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1],
        help="most requests in flight; several values sweep them, one run each",
    )
    parser.add_argument(
        "--request-rate", type=float, nargs="+", default=[float("inf")],
        help="Poisson arrivals per second (default inf: start requests as slots free up); "
             "several values sweep them, one run each (at every concurrency)",
    )
    parser.add_argument("--input-words", type=int, default=32, help="about this many words per prompt")
    parser.add_argument("--max-tokens", type=int, default=128, help="output tokens asked for per request")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    parser.add_argument(
        "--goodput", type=_slo, nargs="*", default=None, metavar="KEY:MS",
        help="SLOs for goodput, e.g. ttft:1000 tpot:100 (default ttft:2000 tpot:150; none: no goodput)",
    )
    parser.add_argument("--label", default="server", help="name of the server in output and plot")
    parser.add_argument("--json", dest="json_path", help="write the summaries here")
    parser.add_argument("--plot", help="write a PNG of throughput and latency against concurrency")


def run_serve(args: argparse.Namespace) -> int:
    """Run the sweep the arguments describe; print, and write JSON and a plot if asked."""
    import asyncio
    import json
    from dataclasses import replace

    from glmaas.benchmarks.serve import (
        DEFAULT_SLO_MS,
        BenchConfig,
        format_summary,
        plot_sweep,
        run_benchmark,
    )

    base = BenchConfig(
        base_url=args.base_url.rstrip("/"),
        model=args.model,
        api_key=args.api_key,
        num_prompts=args.num_prompts,
        input_words=args.input_words,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        slo_ms=DEFAULT_SLO_MS if args.goodput is None else dict(args.goodput),
    )
    summaries = []
    for concurrency in args.concurrency:
        for rate in args.request_rate:
            summary = asyncio.run(run_benchmark(replace(base, concurrency=concurrency, request_rate=rate)))
            print(format_summary(args.label, summary), flush=True)
            summaries.append(summary)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({args.label: summaries}, f, indent=2)
    if args.plot:
        plot_sweep({args.label: summaries}, args.plot, title=f"{args.model} via {args.base_url}")
    return 0 if all(s["failed"] == 0 for s in summaries) else 1
