"""glmaas against llama-cpp-python's server, on the default model, in one run.

Both servers get the same streaming chat load from `glmaas bench serve`'s engine (fixed
concurrency 1, 4, 8, 16; same prompts, max_tokens, temperature 0), one server at a time so they
never share the CPU, alternating in short rounds so that the background load of a shared machine
falls on both alike. In the rounds at concurrency 8, with both servers idle, llama.cpp's own
batched decode in process at 8 sequences (low-level batch API, greedy, nothing else in the
process): the ceiling a server on this machine could reach. Prints every figure, the ratios and
the serving targets (docs/performance.md); writes JSON and a PNG into --out-dir.

`--contend N` keeps N pure-Python CPU spinners running for the whole run (`glmaas.benchmarks.
contention`), so both servers share the cores with a neighbour alike; `--threads 0` leaves each
server at its own default thread count (glmaas: `threads=auto`). `--request-rate R ...` adds levels
of Poisson arrivals at R requests/s (up to 64 in flight) and reports goodput at the SLO (`--slo`,
by default TTFT ≤ 2 s and TPOT ≤ 150 ms). Every level's figures carry the load average taken as the
level ended; each server's resident memory is printed after its start and after the run (`--cells
0`: glmaas with a KV region per slot, the engine's default).

    python bench/serve_compare.py                       # threads = all cores
    python bench/serve_compare.py --threads 1 --input-words 16 --max-tokens 64 --out-dir docs/perf
    python bench/serve_compare.py --threads 0 --contend 1   # own defaults, one neighbour spinning
    python bench/serve_compare.py --threads 0 --concurrency 1 --request-rate 0.5 1 2 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import llama_cpp
import numpy as np

from glmaas.benchmarks.contention import load_average, spinners
from glmaas.benchmarks.serve import (
    DEFAULT_SLO_MS,
    BenchConfig,
    RequestResult,
    format_summary,
    make_prompt,
    plot_sweep,
    run_requests,
    summarize,
    with_settings,
)
from glmaas.benchmarks.servers import glmaas_server, llama_cpp_server
from glmaas.engines.llamacpp import load_model
from glmaas.engines.registry import default_model_path

# Poisson levels: arrivals are not held back by a concurrency cap below what the servers queue.
RATE_CONCURRENCY = 64


def run_level(
    servers: list, base: BenchConfig, concurrency: int, prompts: int, rounds: int,
    each_round: Callable[[], None] | None = None, request_rate: float = float("inf"),
) -> dict[str, dict]:
    """One level (a concurrency, or Poisson arrivals at `request_rate` up to `concurrency` in
    flight) on every server, in `rounds` alternating rounds of `prompts` requests each; per
    server, the requests of all its rounds summarised over their summed wall time. Alternating in
    short rounds spreads a change in the machine's background load over both servers instead of
    landing on one."""
    results: dict[str, list[RequestResult]] = {s.name: [] for s in servers}
    durations = dict.fromkeys(results, 0.0)
    configs = {}
    for _ in range(rounds):
        for server in servers:
            config = replace(
                base, base_url=server.base_url, api_key=server.api_key, model=server.model,
                concurrency=concurrency, num_prompts=prompts, request_rate=request_rate,
            )
            configs[server.name] = config
            got, seconds = asyncio.run(run_requests(config))
            results[server.name] += got
            durations[server.name] += seconds
        if each_round is not None:
            each_round()
    out = {}
    load1 = os.getloadavg()[0]
    for name, got in results.items():
        config = replace(configs[name], num_prompts=len(got))
        out[name] = {**with_settings(config, summarize(got, durations[name], config.slo_ms)), "load1": load1}
        print(format_summary(name, out[name]) + f"\n   {load_average()}", flush=True)
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def batched_decode_ceiling(model_path: Path, threads: int, n_seq: int, prompt_words: int, steps: int) -> dict:
    """Decode tokens/s of `n_seq` sequences stepped together by llama.cpp in process: prefill
    all prompts, then `steps` batches of one token per sequence, argmax sampling."""
    model = load_model("ceiling", model_path)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_seq_max = n_seq
    cparams.n_ctx = n_seq * 1024
    cparams.n_batch = cparams.n_ubatch = 512
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.kv_unified = False
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def tokenize(text: str) -> list[int]:
        buf = (llama_cpp.llama_token * 1024)()
        n = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 1024, False, True)
        return list(buf[:n])

    def fill(items: list[tuple[int, int, int, bool]]) -> None:
        for i, (tok, pos, seq, logits) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(items)

    prompts = [
        tokenize(f"<|im_start|>user\n{make_prompt(i, prompt_words)}<|im_end|>\n<|im_start|>assistant\n")
        for i in range(n_seq)
    ]
    t0 = time.perf_counter()
    last: list[int] = []
    for s, p in enumerate(prompts):
        fill([(t, i, s, i == len(p) - 1) for i, t in enumerate(p)])
        assert llama_cpp.llama_decode(ctx, batch) == 0
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        last.append(int(np.argmax(row)))
    t1 = time.perf_counter()
    pos = [len(p) for p in prompts]
    for _ in range(steps):
        fill([(last[s], pos[s], s, True) for s in range(n_seq)])
        assert llama_cpp.llama_decode(ctx, batch) == 0
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n_seq, n_vocab))
        last = [int(x) for x in rows.argmax(axis=1)]
        pos = [p + 1 for p in pos]
    t2 = time.perf_counter()
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return {
        "prompt_tokens": sum(len(p) for p in prompts),
        "decode_tokens": n_seq * steps,
        "decode_s": t2 - t1,
        "total_s": t2 - t0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp threads of both servers; 0: each server's own default")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level and server")
    parser.add_argument("--prompts-per-round", type=int, default=4, help="raised to the concurrency")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--input-words", type=int, default=32)
    parser.add_argument("--slots", type=int, default=16, help="glmaas engine slots")
    parser.add_argument("--cells", type=int, help="glmaas KV cache cells (0: a region per slot; default: the engine's)")
    parser.add_argument("--out-dir", default="bench/out")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="N pure-Python CPU spinners running for the whole run")
    parser.add_argument("--request-rate", type=float, nargs="*", default=[], metavar="R",
                        help="also levels of Poisson arrivals at R requests/s, with goodput at the SLO")
    parser.add_argument("--slo", nargs="*", default=[f"{k}:{v:g}" for k, v in DEFAULT_SLO_MS.items()],
                        metavar="KEY:MS", help="goodput objectives (ttft, tpot, e2e in ms)")
    parser.add_argument("--skip", choices=["glmaas", "llama_cpp.server", "ceiling"], nargs="*", default=[])
    args = parser.parse_args()

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = default_model_path()
    load = os.getloadavg()
    threads = "each server's own default" if args.threads == 0 else args.threads
    print(f"model {model.name}; {os.cpu_count()} cores, threads {threads}; {args.contend} CPU spinners; "
          f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    slo = dict(_slo(text) for text in args.slo)
    base = BenchConfig(base_url="", model="", max_tokens=args.max_tokens, input_words=args.input_words,
                       slo_ms=slo)
    runs: dict[str, list[dict]] = {}
    rate_runs: dict[str, list[dict]] = {}
    ceiling_runs: list[dict] = []

    def measure_ceiling() -> None:
        ceiling_runs.append(batched_decode_ceiling(model, args.threads or os.cpu_count() or 1, 8,
                                                   args.input_words, args.max_tokens))

    with contextlib.ExitStack() as stack:
        # The neighbours start first and stop last: both servers run beside them from start to end.
        stack.enter_context(spinners(args.contend))
        servers = []
        if "glmaas" not in args.skip:
            options = ",".join(([f"threads={args.threads}"] if args.threads else []) + [f"slots={args.slots}"]
                               + ([f"cells={args.cells}"] if args.cells is not None else []))
            servers.append(stack.enter_context(glmaas_server(model, options, str(out_dir / "glmaas.log"))))
        if "llama_cpp.server" not in args.skip:
            log = str(out_dir / "llama_cpp_server.log")
            servers.append(stack.enter_context(llama_cpp_server(model, args.threads or None, log_path=log)))
        memory = {s.name: {"rss_mb_at_start": rss_mb(s.pid)} for s in servers}
        # Both are up (an idle server takes no CPU); each level alternates between them, and at
        # concurrency 8 the in-process ceiling is measured in the same rounds.
        for c in args.concurrency:
            prompts = max(args.prompts_per_round, c)
            hook = measure_ceiling if c == 8 and "ceiling" not in args.skip else None
            for name, summary in run_level(servers, base, c, prompts, args.rounds, hook).items():
                runs.setdefault(name, []).append(summary)
        for rate in args.request_rate:
            prompts = max(args.prompts_per_round, round(4 * rate))
            for name, summary in run_level(servers, base, RATE_CONCURRENCY, prompts, args.rounds,
                                           request_rate=rate).items():
                rate_runs.setdefault(name, []).append(summary)
        for s in servers:
            memory[s.name]["rss_mb_after_run"] = rss_mb(s.pid)
            print(f"{s.name}: resident memory {memory[s.name]['rss_mb_at_start']:.0f} MiB after start, "
                  f"{memory[s.name]['rss_mb_after_run']:.0f} MiB after the run", flush=True)
    ceiling = None
    if ceiling_runs:
        decoded = sum(r["decode_tokens"] for r in ceiling_runs)
        ceiling = {
            "sequences": 8,
            "threads": args.threads or os.cpu_count() or 1,
            "rounds": len(ceiling_runs),
            "decode_tok_s": decoded / sum(r["decode_s"] for r in ceiling_runs),
            "with_prefill_tok_s": decoded / sum(r["total_s"] for r in ceiling_runs),
        }
        print(f"== llama.cpp in-process batched decode, 8 sequences, {ceiling['threads']} threads: "
              f"{ceiling['decode_tok_s']:.1f} tok/s decoding ({ceiling['with_prefill_tok_s']:.1f} with prefill)")
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    report = {"model": model.name, "threads": args.threads, "contend": args.contend, "load_before": load,
              "load_after": load_after, "runs": runs, "rate_runs": rate_runs, "ceiling_8": ceiling,
              "memory": memory}
    (out_dir / "serve_compare.json").write_text(json.dumps(report, indent=2))
    if runs:
        plot_sweep(runs, str(out_dir / "serve_compare.png"),
                   title=f"{model.name}, {args.threads} threads, max_tokens {args.max_tokens}")
    if rate_runs:
        plot_sweep(rate_runs, str(out_dir / "serve_compare_goodput.png"),
                   title=f"{model.name}, Poisson arrivals, goodput at {', '.join(args.slo)}, {args.contend} spinners")
    print_verdict(runs, ceiling, args.concurrency)
    if rate_runs:
        print_goodput(rate_runs, slo)
    return 0


def _slo(text: str) -> tuple[str, float]:
    key, _, value = text.partition(":")
    return key, float(value)


def print_goodput(rate_runs: dict[str, list[dict]], slo: dict[str, float]) -> None:
    """Goodput of each server as the arrival rate rises, and the ratio of the best of each."""
    names = list(rate_runs)
    print(f"\nPoisson arrivals, goodput at {', '.join(f'{k} <= {v:g} ms' for k, v in slo.items())} (req/s)")
    print("rate req/s  " + "  ".join(f"{n:>18}" for n in names) + "  load1")
    for i, summary in enumerate(rate_runs[names[0]]):
        cells = "  ".join(f"{rate_runs[n][i]['goodput']:18.2f}" for n in names)
        print(f"{summary['settings']['request_rate']:>10}  {cells}  {summary['load1']:.2f}")
    best = {n: max(s["goodput"] for s in rate_runs[n]) for n in names}
    if "glmaas" in best and best.get("llama_cpp.server"):
        r = best["glmaas"] / best["llama_cpp.server"]
        print(f"{'MET ' if r >= 2 else 'MISSED'}  best goodput: >= 2x llama_cpp.server: {r:.2f}x")


def print_verdict(runs: dict[str, list[dict]], ceiling: dict | None, levels: list[int]) -> None:
    ours, peer = runs.get("glmaas"), runs.get("llama_cpp.server")
    print("\nconcurrency  glmaas tok/s  llama_cpp.server tok/s  ratio  glmaas TTFT p50/p99 ms  peer TTFT p50/p99 ms")
    for i, c in enumerate(levels):
        g = ours[i] if ours else None
        p = peer[i] if peer else None
        ratio = f"{g['output_throughput'] / p['output_throughput']:.2f}" if g and p else "-"
        print(f"{c:11d}  {g['output_throughput'] if g else float('nan'):12.1f}  "
              f"{p['output_throughput'] if p else float('nan'):22.1f}  {ratio:>5}  "
              f"{(g or {}).get('ttft_ms', {}).get('p50', float('nan')):10.0f}/{(g or {}).get('ttft_ms', {}).get('p99', float('nan')):<10.0f}  "
              f"{(p or {}).get('ttft_ms', {}).get('p50', float('nan')):8.0f}/{(p or {}).get('ttft_ms', {}).get('p99', float('nan')):.0f}")
    if not ours:
        return
    by_c = {s["settings"]["concurrency"]: s for s in ours}
    peer_c = {s["settings"]["concurrency"]: s for s in peer or []}
    checks = []
    if 1 in by_c and 1 in peer_c:
        r = by_c[1]["output_throughput"] / peer_c[1]["output_throughput"]
        checks.append(("concurrency 1: ≥ 0.95× llama_cpp.server", r >= 0.95, f"{r:.2f}×"))
    if 8 in by_c and 8 in peer_c:
        r = by_c[8]["output_throughput"] / peer_c[8]["output_throughput"]
        checks.append(("concurrency 8: ≥ 2× llama_cpp.server", r >= 2.0, f"{r:.2f}×"))
    if 8 in by_c and ceiling:
        r = by_c[8]["output_throughput"] / ceiling["decode_tok_s"]
        checks.append(("concurrency 8: ≥ 85% of in-process batched decode", r >= 0.85, f"{r:.0%}"))
    if 8 in by_c:
        p99 = by_c[8]["ttft_ms"]["p99"]
        checks.append(("concurrency 8: p99 TTFT < 1 s", p99 < 1000, f"{p99:.0f} ms"))
    print()
    for name, ok, value in checks:
        print(f"{'MET ' if ok else 'MISSED'}  {name}: {value}")


if __name__ == "__main__":
    sys.exit(main())
