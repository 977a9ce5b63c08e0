"""The books' steps on PostgreSQL + Redis, one request at a time against several in one round trip.

A batch of N admissions (`Meter.admit_many`: limits in one Redis pipeline, holds in one
PostgreSQL transaction) and then their N settlements (`Meter.settle_many`), for N = 1, 2, 4, 8,
in rounds so that the sizes take turns. N = 1 is the path a lone request takes (a single
statement on each, as before group commit). Prints, per size, the CPU time of the calling thread
per request and the wall time per batch, medians over rounds; and what the wait for neighbours
before a batch leaves costs a lone request.

    python bench/group_commit.py [--rounds 5] [--requests 200]

Needs PostgreSQL on 127.0.0.1:5432 (database `test` to create a scratch database from) and Redis
on 127.0.0.1:6379 (database 14); both as the tests use them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import anyio
import psycopg
import redis
import uvloop

from glmaas.platform.accounts import create_account
from glmaas.platform.auth import Principal
from glmaas.platform.group_commit import GATHER_TURNS
from glmaas.platform.keys import create_key
from glmaas.platform.ledger import Outcome, credit
from glmaas.platform.limits import LimitSpec
from glmaas.platform.limits_redis import RedisLimiter
from glmaas.platform.metering import AdmissionAsk, Meter, RequestStatus, SettlementAsk
from glmaas.platform.pricing import PriceSheet, set_price
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/14"
SIZES = (1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="requests per size and round")
    args = parser.parse_args()

    name = f"glmaas_group_commit_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    db = open_database(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        with db.session() as s, s.begin():
            account = create_account(s, "bench")
            key, _ = create_key(s, SecretBox(os.urandom(32)), account)
            credit(s, account.id, "topup", 10**12)
            set_price(s, "m", PriceSheet(1_000_000, 100_000, 2_000_000))
            principal = Principal(key.id, account.id, None, LimitSpec(rpm=10**7, tpm=10**9, concurrency=10**4))
        limiter = RedisLimiter(redis.Redis.from_url(REDIS_URL), prefix=f"bench-group-commit:{time.time_ns()}")
        meter = Meter(db.engine, limiter, "bench:1:1")
        outcome = Outcome(RequestStatus.OK, 0, 16, "stop", 0.0, 1.0, 2.0)
        figures: dict[int, list[tuple[float, float, float, float]]] = {n: [] for n in SIZES}
        serial = 0
        for _ in range(args.rounds + 1):  # the first round warms up and is not counted
            for size in SIZES:
                batches = max(1, args.requests // size)
                cpu_admit = cpu_settle = wall_admit = wall_settle = 0.0
                for _ in range(batches):
                    asks = [AdmissionAsk(principal, "m", f"r{serial + i}", 10, 16) for i in range(size)]
                    serial += size
                    c0, w0 = time.thread_time(), time.perf_counter()
                    admitted = meter.admit_many(asks)
                    c1, w1 = time.thread_time(), time.perf_counter()
                    errors = meter.settle_many([SettlementAsk(a, outcome) for a in admitted])  # type: ignore[arg-type]
                    c2, w2 = time.thread_time(), time.perf_counter()
                    if any(errors) or not all(hasattr(a, "ticket") for a in admitted):
                        raise SystemExit(f"a step failed: {admitted} {errors}")
                    cpu_admit += c1 - c0
                    cpu_settle += c2 - c1
                    wall_admit += w1 - w0
                    wall_settle += w2 - w1
                n = batches * size
                figures[size].append((cpu_admit / n * 1e6, cpu_settle / n * 1e6,
                                      wall_admit / batches * 1e3, wall_settle / batches * 1e3))
        print(f"load average {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.requests} requests "
              "per size; medians (the first round, a warm-up, left out)")
        print(f"{'batch':>5} {'admit CPU us/req':>16} {'settle CPU us/req':>17} {'admit ms/batch':>14} "
              f"{'settle ms/batch':>15}")
        for size in SIZES:
            rows = figures[size][1:]
            med = [statistics.median(r[i] for r in rows) for i in range(4)]
            print(f"{size:>5} {med[0]:16.0f} {med[1]:17.0f} {med[2]:14.2f} {med[3]:15.2f}")
        print(f"a lone step first waits {GATHER_TURNS} turns of the event loop for neighbours: "
              f"{_gather_cost_us():.1f} us on uvloop")
        alone = [statistics.median(r[i] for r in figures[1][1:]) for i in (0, 1)]
        eight = [statistics.median(r[i] for r in figures[8][1:]) for i in (0, 1)]
        print(f"CPU per request, batches of 8 against one at a time: {sum(eight) / sum(alone):.2f}x")
    finally:
        db.dispose()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _gather_cost_us(steps: int = 20_000) -> float:
    """Wall time of the turns a `StepQueue` leader waits before sending its batch, when no other
    task is ready (a lone request), per step."""
    async def turns() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            for _ in range(GATHER_TURNS):
                await anyio.sleep(0)
        return (time.perf_counter() - start) / steps * 1e6

    return uvloop.run(turns())


if __name__ == "__main__":
    main()
