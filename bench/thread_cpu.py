"""Where a contended glmaas server's time goes, thread by thread.

For each `threads` value (alternating as given: a count, or `auto` for the engine's default),
starts `glmaas serve` on the default model with those llama.cpp threads beside `--contend` CPU
spinners, sends `--requests` streaming requests (default 8) of `--max-tokens` output tokens
(default 32) at concurrency 8, and prints the output tokens/s and, per thread of the server, its
share of a core (utime + stime) and its voluntary (it blocked) and involuntary (it was preempted)
context switches per second, from /proc/PID/task.

    python bench/thread_cpu.py 2 1 auto 2 1 auto [--contend 1] [--requests 32 --max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os

from glmaas.benchmarks.contention import load_average, spinners
from glmaas.benchmarks.serve import BenchConfig, run_requests, summarize
from glmaas.benchmarks.servers import glmaas_server
from glmaas.engines.registry import default_model_path

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def threads_of(pid: int) -> dict[str, tuple[int, int, int]]:
    """tid -> (CPU ticks, voluntary switches, involuntary switches) of every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            fields = stat[stat.rindex(")") + 2 :].split()
            status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/task/{tid}/status").read().splitlines())
        except OSError:
            continue  # the thread ended
        out[tid] = (int(fields[11]) + int(fields[12]), int(status["voluntary_ctxt_switches"]),
                    int(status["nonvoluntary_ctxt_switches"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("threads", nargs="+", help="llama.cpp threads (N or auto), one run each")
    parser.add_argument("--contend", type=int, default=1, help="CPU spinners beside the server")
    parser.add_argument("--requests", type=int, default=8, help="requests per run, 8 at a time")
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens of each request")
    args = parser.parse_args()
    for threads in args.threads:
        with spinners(args.contend), glmaas_server(default_model_path(), f"threads={threads}") as server:
            config = BenchConfig(base_url=server.base_url, model=server.model, api_key=server.api_key,
                                 concurrency=8, num_prompts=args.requests, max_tokens=args.max_tokens,
                                 input_words=16)
            before = threads_of(server.pid)
            results, seconds = asyncio.run(run_requests(config))
            after = threads_of(server.pid)
        summary = summarize(results, seconds, {})
        print(f"threads={threads}: {summary['output_throughput']:.1f} tok/s, TPOT p50 "
              f"{summary['tpot_ms']['p50']:.0f} ms over {seconds:.1f} s; {args.contend} spinners, {load_average()}")
        for tid, (ticks, vol, inv) in sorted(after.items(), key=lambda kv: before.get(kv[0], (0,))[0] - kv[1][0]):
            t0, v0, i0 = before.get(tid, (0, 0, 0))
            if ticks > t0:
                print(f"   thread {tid:>7}: {(ticks - t0) * TICK_MS / seconds / 10:5.1f}% of a core, "
                      f"{(vol - v0) / seconds:6.0f} voluntary, {(inv - i0) / seconds:6.0f} involuntary switches/s")


if __name__ == "__main__":
    main()
