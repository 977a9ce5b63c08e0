"""The report of `bench/gateway.py`: the table of every system at every concurrency, the
ratios between them, the targets met or missed, and the checks of the books after the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway import Phase


def print_report(phases: list[Phase], checks: list[str], env: dict[str, str], concurrency: list[int],
                 baseline: str | None = None) -> None:
    """Print the figures of `phases` (medians over rounds), then what they say against the targets."""
    print()
    for k, v in env.items():
        print(f"{k:8} {v}")
    print()
    head = (f"{'system':16} {'c':>3} {'req/s':>8} {'CPU ms/req':>10} {'req/s/core':>10} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'added p50':>9} {'db CPU ms/req':>13} {'errors':>6} {'load1':>5} "
            f"{'core0 other':>11}")
    print(head)
    print("-" * len(head))
    for p in phases:
        added = "" if p.added_p50_ms is None else f"{p.added_p50_ms:+.2f}"
        cpu, per_core = ("", "") if p.system == "upstream" else (f"{p.cpu_ms:.2f}", f"{1000 / p.cpu_ms:.0f}")
        print(f"{p.system:16} {p.concurrency:>3} {p.rps:8.1f} {cpu:>10} {per_core:>10} {p.p50_ms:8.2f} "
              f"{p.p99_ms:8.2f} {added:>9} {p.store_cpu_ms:13.2f} {p.errors:>6} {p.load1:5.2f} "
              f"{p.core0_other_pct:10.0f}%")
    by = {(p.system, p.concurrency): p for p in phases}
    print()
    for ours, theirs in (("glmaas sqlite", "litellm"), ("glmaas pg+redis", "litellm+redis")):
        for c in concurrency:
            a, b = by.get((ours, c)), by.get((theirs, c))
            if a and b:
                print(f"{ours} / {theirs}, c={c}: {a.rps / b.rps:.1f}x the requests/s measured, "
                      f"{b.cpu_ms / a.cpu_ms:.1f}x the requests/s per core (1/CPU per request), "
                      f"added p50 {a.added_p50_ms:.2f} vs {b.added_p50_ms:.2f} ms")
    print()
    for c in concurrency:
        a, b = by.get(("glmaas sqlite", c)), by.get(("litellm", c))
        if a and b:
            measured, capacity = a.rps / b.rps, b.cpu_ms / a.cpu_ms
            print(f"target: requests/s per worker core >= 5x LiteLLM's, c={c}: {capacity:.1f}x from CPU "
                  f"per request {'met' if capacity >= 5 else 'MISSED'}; {measured:.1f}x measured "
                  f"{'met' if measured >= 5 else 'MISSED'}")
    for c in concurrency:
        a, b = by.get(("glmaas sqlite", c)), by.get((f"glmaas@{baseline}", c))
        if a and b:
            print(f"this tree / glmaas@{baseline}, c={c}: CPU per request {a.cpu_ms:.3f} vs {b.cpu_ms:.3f} ms "
                  f"({(a.cpu_ms / b.cpu_ms - 1) * 100:+.1f}%), requests/s {a.rps / b.rps:.2f}x")
    for p in phases:
        if p.mean_batch is not None:
            print(f"{p.system} c={p.concurrency}: the books carried {p.mean_batch:.2f} steps per round trip "
                  "(group commit; median over rounds)")
    if len(concurrency) > 1:
        low, high = min(concurrency), max(concurrency)
        for system in ("glmaas pg+redis", f"pg+redis@{baseline}"):
            a, b = by.get((system, high)), by.get((system, low))
            if a and b:
                ratio = a.rps / b.rps
                print(f"target: {system} at c={high} >= 2.5x its requests/s at c={low}: {ratio:.2f}x "
                      f"{'met' if ratio >= 2.5 else 'MISSED'} (CPU per request {a.cpu_ms:.3f} vs "
                      f"{b.cpu_ms:.3f} ms)")
    a = by.get(("glmaas sqlite", min(concurrency)))
    if a and a.added_p50_ms is not None:
        print(f"target: added p50 <= 2 ms on SQLite, c={a.concurrency}: {a.added_p50_ms:.2f} ms "
              f"{'met' if a.added_p50_ms <= 2 else 'MISSED'}")
    if checks:
        print()
        print("over the rpm limit (requests one after another), and glmaas's books after the run:")
        for line in checks:
            print(f"  {line}")
    if any(p.errors for p in phases):
        print("WARNING: some phases had errors (non-2xx or socket errors); their figures are not valid")
    # load1 counts this run's own wrk and server (about 2 while a server is saturated); core 0's
    # other share says how much the neighbours (and, for pg+redis, PostgreSQL and Redis) took.
    if busy := [f"{p.system} c={p.concurrency}" for p in phases if p.core0_other_pct > 10]:
        print(f"NOTE: other processes took over 10% of core 0 during: {', '.join(busy)} (for glmaas "
              "pg+redis that includes PostgreSQL and Redis); those figures are measured under load")
