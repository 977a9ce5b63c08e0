"""CPU contention for benchmarks: neighbours that keep cores busy while the servers are measured.

A real server shares its cores (with its own HTTP work, its database, other tenants). A spinner
is a pure-Python process that never sleeps, the simplest such neighbour; `spinners(n)` keeps `n`
of them running for the length of a `with` block, and `load_average()` is printed next to every
figure taken under them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

SPIN = "while True:\n    pass\n"


@contextlib.contextmanager
def spinners(n: int) -> Iterator[list[int]]:
    """`n` CPU spinner processes for the length of the block; yields their pids."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `load 1.02 0.87 0.55`."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"
