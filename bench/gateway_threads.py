"""Where glmaas's CPU goes per request, thread by thread, on PostgreSQL + Redis at concurrency 1
and 8: user and system CPU time and voluntary / involuntary context switches of each thread of
the server (from /proc), per request, under the same wrk load as `bench/gateway.py`.

    python bench/gateway_threads.py [--rounds 2] [--duration 5]

It shows what a round trip costs the threads that wait for it: at concurrency 1 every thread
sleeps while PostgreSQL or Redis answers, and its next work runs on a core that has gone idle.
Needs wrk, taskset, PostgreSQL and Redis as `bench/gateway.py` does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

import gateway as gw  # bench/gateway.py, beside this file

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[str, tuple[int, int, int, int]]:
    """Per thread id: utime and stime (ticks), voluntary and involuntary context switches."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            status = dict(line.split(":\t", 1) for line in
                          Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines() if ":\t" in line)
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[tid] = (int(stat[11]), int(stat[12]), int(status["voluntary_ctxt_switches"]),
                    int(status["nonvoluntary_ctxt_switches"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        url = stack.enter_context(gw.postgres_database())
        t = gw.start_glmaas(stack, "glmaas pg+redis", Path(work), url, f"{gw.REDIS}/{gw.GLMAAS_REDIS_DB}")
        print(f"load average {os.getloadavg()[0]:.2f}; server pinned to core {gw.SERVER_CORE}, wrk on core "
              f"{gw.LOAD_CORE}; per request: user / system CPU, voluntary / involuntary switches")
        for _ in range(args.rounds):
            for concurrency in (1, 8):
                gw.wrk(t, concurrency, 1)  # warm-up
                before = threads(t.pid)
                r = gw.wrk(t, concurrency, args.duration)
                after = threads(t.pid)
                n = max(r["requests"], 1)
                print(f"c={concurrency}: {n / r['seconds']:.0f} req/s, p50 {r['p50']:.2f} ms")
                for tid, now in sorted(after.items()):
                    was = before.get(tid)
                    if was is None:
                        continue
                    d = [b - a for a, b in zip(was, now, strict=True)]
                    if d[0] + d[1] or d[2] > n // 10:
                        print(f"  thread {tid}: user {d[0] * TICK_US / n:6.0f} us  system {d[1] * TICK_US / n:5.0f} us"
                              f"  switches {d[2] / n:4.1f} / {d[3] / n:4.1f}")


if __name__ == "__main__":
    main()
