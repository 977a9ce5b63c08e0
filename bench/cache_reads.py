"""What the request path pays when its one-second caches refresh: the key, the model's price and
the account's limits, read through an ORM session (as before `store/sql.py`'s `Reader`) and
through the `Reader`, on a fresh SQLite store, alternating, in one run. Prints the median
microseconds of each read both ways and their ratio.

    python bench/cache_reads.py [--reads 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from glmaas.platform.accounts import ensure_account
from glmaas.platform.keys import create_key
from glmaas.platform.pricing import PriceSheet, price_of, set_price
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database, sqlite_url
from glmaas.store.sql import Reader
from glmaas.store.tables import AccountModelLimit, ApiKey


def median_us(read: Callable[[], object], reads: int) -> float:
    for _ in range(reads // 10):  # warm up
        read()
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    db = open_database(sqlite_url(Path(tempfile.mkdtemp())))
    with db.session() as s, s.begin():
        account = ensure_account(s, "bench")
        key, _ = create_key(s, SecretBox(os.urandom(32)), account, name="bench")
        set_price(s, "m", PriceSheet(1, 1, 1))
        s.add(AccountModelLimit(account_id=account.id, model="*", rpm=100))
        key_id, account_id = key.id, account.id
    reader = Reader(db.engine)

    def orm_key() -> object:
        with db.session() as s:
            return s.get(ApiKey, key_id)

    def orm_price() -> object:
        with db.session() as s:
            return price_of(s, "m")

    def orm_limits() -> object:
        with db.session() as s:
            return list(s.scalars(select(AccountModelLimit).where(
                AccountModelLimit.account_id == account_id, AccountModelLimit.model.in_(("m", "*")))))

    pairs = {
        "key": (orm_key, lambda: reader.row("key_row", key_id=key_id)),
        "price": (orm_price, lambda: reader.row("price_row", model="m")),
        "limits": (orm_limits, lambda: reader.rows("account_model_limits", account_id=account_id, model="m")),
    }
    figures: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in pairs}
    for _ in range(args.rounds):
        for name, (orm, direct) in pairs.items():
            figures[name][0].append(median_us(orm, args.reads))
            figures[name][1].append(median_us(direct, args.reads))
    load = os.getloadavg()
    print(f"{args.rounds} rounds x {args.reads} reads, SQLite; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| read | ORM session µs | Reader µs | ratio |")
    print("|---|---|---|---|")
    for name, (orm, direct) in figures.items():
        o, d = statistics.median(orm), statistics.median(direct)
        print(f"| {name} | {o:.1f} | {d:.1f} | {o / d:.1f}x |")


if __name__ == "__main__":
    main()
