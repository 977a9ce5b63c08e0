"""Many requests of one account admitted and settled at once through `start_run`, on SQLite with
in-process limits and on PostgreSQL with Redis limits (where the steps run on worker threads and
overlap): every one settles once, the books balance, and a concurrency limit is never overshot."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from glmaas.platform.accounts import create_account
from glmaas.platform.auth import Principal
from glmaas.platform.errors import RateLimited
from glmaas.platform.keys import create_key
from glmaas.platform.ledger import balance, credit, folded_balance
from glmaas.platform.limits import LimitSpec, LocalLimiter
from glmaas.platform.limits_redis import RedisLimiter
from glmaas.platform.metered import start_run
from glmaas.platform.metering import Meter, RequestStatus
from glmaas.platform.pricing import PriceSheet, set_price
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database, sqlite_url
from glmaas.store.tables import ApiKey

TOPUP = 1_000_000
REQUESTS = 24


@pytest.fixture(params=["sqlite", "postgresql+redis"])
def books(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        db, limiter = open_database(sqlite_url(tmp_path)), LocalLimiter()
    else:
        db = open_database(request.getfixturevalue("pg_url"))
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        limiter = RedisLimiter(client, prefix=f"test-books:{time.time_ns()}")
    with db.session() as s, s.begin():
        account = create_account(s, f"books-{time.time_ns()}")
        key, _ = create_key(s, SecretBox(b"b" * 32), account)
        credit(s, account.id, "topup", TOPUP)
        set_price(s, "m", PriceSheet(1_000_000, 100_000, 2_000_000))
        key_id, account_id = key.id, account.id
    yield db, Meter(db.engine, limiter, "host:1:1"), key_id, account_id
    db.dispose()


async def _one(meter: Meter, principal: Principal, i: int) -> bool:
    """Admit, produce a few tokens, settle; False when a limit refused it."""
    try:
        run = await start_run(meter, principal, "m", f"req-{i}", prompt_tokens=10, max_tokens=20,
                              arrived=time.monotonic(), durable=True, timeout_s=30)
    except RateLimited:
        return False
    await asyncio.sleep(0.05)  # the others are admitted meanwhile
    run.completion_tokens = 5
    await run.settle(RequestStatus.OK)
    await run.settle(RequestStatus.OK)  # a second settlement does nothing
    return True


def test_concurrent_runs_settle_once_and_the_books_balance(books) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    principal = Principal(key_id, account_id, None)

    async def main() -> list[bool]:
        return await asyncio.gather(*(_one(meter, principal, i) for i in range(REQUESTS)))

    assert all(asyncio.run(main()))
    each = 10 * 1 + 5 * 2  # micro-units: 10 prompt tokens at 1, 5 output tokens at 2
    with db.session() as s:
        assert balance(s, account_id) == folded_balance(s, account_id) == TOPUP - REQUESTS * each
        key = s.get(ApiKey, key_id)
        assert (key.held, key.spent) == (0, REQUESTS * each)
    assert meter.open_by_model == {}


def test_a_concurrency_limit_holds_under_concurrent_admission(books) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    principal = Principal(key_id, account_id, None, LimitSpec(concurrency=4))

    async def main() -> list[bool]:
        return await asyncio.gather(*(_one(meter, principal, i) for i in range(12)))

    admitted = asyncio.run(main())
    assert sum(admitted) == 4


def test_network_steps_overlap_and_in_process_steps_run_in_line(books) -> None:  # type: ignore[no-untyped-def]
    _, meter, _, _ = books

    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(meter.step(time.sleep, 0.2) for _ in range(4)))
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    if meter.in_process:
        assert elapsed >= 0.8  # one after another, on the loop's own thread
    else:
        assert elapsed < 0.6  # side by side on worker threads
