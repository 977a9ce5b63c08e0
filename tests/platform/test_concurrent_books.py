"""Many requests of one account admitted and settled at once, on SQLite with in-process limits and
on PostgreSQL with Redis limits (where concurrent steps go out together, `group_commit`): every
one settles once, the books balance, a limit is never overshot, and a request refused inside a
batch (a duplicate id, the balance, a key's budget) is refused alone."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis
from sqlalchemy import func, select

from glmaas.platform import metering
from glmaas.platform.accounts import create_account
from glmaas.platform.auth import Principal
from glmaas.platform.errors import BudgetExceeded, DuplicateRequest, InsufficientBalance, RateLimited
from glmaas.platform.keys import create_key
from glmaas.platform.ledger import Outcome, balance, credit, folded_balance
from glmaas.platform.limits import LimitSpec, LocalLimiter
from glmaas.platform.limits_redis import RedisLimiter
from glmaas.platform.metered import start_run
from glmaas.platform.metering import Admission, AdmissionAsk, Meter, RequestStatus, SettlementAsk
from glmaas.platform.pricing import PriceSheet, set_price
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database, sqlite_url
from glmaas.store.sql import run_in_one_round_trip
from glmaas.store.tables import Account, ApiKey, Hold, UsageRecord

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


def test_concurrent_network_steps_share_round_trips_and_in_process_steps_run_in_line(books) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    principal = Principal(key_id, account_id, None)
    batches: list[int] = []
    admit_many = meter.admit_many

    def counting(asks):  # type: ignore[no-untyped-def]
        batches.append(len(asks))
        return admit_many(asks)

    meter._admissions._run_batch = counting  # the queue's step, counted

    async def main() -> list[bool]:
        return await asyncio.gather(*(_one(meter, principal, i) for i in range(REQUESTS)))

    assert all(asyncio.run(main()))
    if meter.in_process:
        assert batches == []  # no queue, no thread: each admission ran in line
    else:
        assert sum(batches) == REQUESTS
        assert len(batches) < REQUESTS / 2, batches  # asked for together, sent together


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """The group commits run: (statement, how many, "ok" or the error's name), so that a test
    sees the batch path taken and not only the path each step falls back to alone."""
    calls: list[tuple[str, int, str]] = []

    def spy(engine, steps):  # type: ignore[no-untyped-def]
        try:
            result = run_in_one_round_trip(engine, steps)
        except Exception as exc:
            calls.append((steps[0][0], len(steps), type(exc).__name__))
            raise
        calls.append((steps[0][0], len(steps), "ok"))
        return result

    monkeypatch.setattr(metering, "run_in_one_round_trip", spy)
    return calls


def _asks(principal: Principal, ids: list[str], max_tokens: int = 20) -> list[AdmissionAsk]:
    return [AdmissionAsk(principal, "m", rid, 10, max_tokens) for rid in ids]


def test_a_batch_of_admissions_refuses_only_the_duplicate_and_settles_in_one_batch(books, round_trips) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    principal = Principal(key_id, account_id, None)
    (first,) = meter.admit_many(_asks(principal, ["dup"]))
    assert isinstance(first, Admission)
    answers = meter.admit_many(_asks(principal, ["a", "b", "dup", "c"]))
    assert isinstance(answers[2], DuplicateRequest)
    admitted = [first] + [a for a in answers if isinstance(a, Admission)]
    assert [a.ticket.request_id for a in admitted] == ["dup", "a", "b", "c"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Hold).where(Hold.account_id == account_id,
                                                                      Hold.state == "open")) == 4
    assert meter.progress_many([(a, 3, 0) for a in admitted]) == [None] * 4
    with db.session() as s:
        assert [h.progress_tokens for h in s.scalars(select(Hold).where(Hold.account_id == account_id))] == [3] * 4
    outcome = Outcome(RequestStatus.OK, 0, 5, "stop", 0.0, 1.0, 2.0)
    assert meter.settle_many([SettlementAsk(a, outcome) for a in admitted]) == [None] * 4
    assert meter.settle_many([SettlementAsk(a, outcome) for a in admitted]) == [None] * 4  # no second time
    each = 10 * 1 + 5 * 2
    with db.session() as s:
        assert balance(s, account_id) == folded_balance(s, account_id) == TOPUP - 4 * each
        assert (s.get(ApiKey, key_id).held, s.get(ApiKey, key_id).spent) == (0, 4 * each)
        assert s.scalar(select(func.count()).select_from(UsageRecord).where(UsageRecord.account_id == account_id)) == 4
    assert meter.open_by_model == {}
    if meter.in_process:
        assert round_trips == []
    else:  # the holds' batch failed whole on the duplicate, then each was placed alone
        assert round_trips == [("pg_place_hold", 4, "IntegrityError"), ("record_progress", 4, "ok"),
                               ("pg_settle_hold", 4, "ok")]


def test_a_batch_of_admissions_admits_what_the_balance_covers_and_says_why_not_to_the_rest(books, round_trips) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    principal = Principal(key_id, account_id, None, LimitSpec(concurrency=10))
    # Each may cost up to 10 + 2 * 199_995 = 400_000 micro-units: the balance covers two.
    answers = meter.admit_many(_asks(principal, ["a", "b", "c", "d"], max_tokens=199_995))
    assert [type(a) for a in answers] == [Admission, Admission, InsufficientBalance, InsufficientBalance]
    assert "Insufficient balance" in str(answers[2]) and "the account has 0.2" in str(answers[2])
    with db.session() as s:
        assert balance(s, account_id) == folded_balance(s, account_id) == TOPUP - 800_000
    # The refused ones gave their concurrency back: eight more fit beside the two admitted.
    more = meter.admit_many(_asks(principal, [f"x{i}" for i in range(9)], max_tokens=1))
    assert sum(isinstance(a, Admission) for a in more) == 8
    assert isinstance(more[-1], RateLimited)
    assert round_trips == ([] if meter.in_process else [("pg_place_hold", 4, "ok"), ("pg_place_hold", 8, "ok")])


def test_a_budgeted_key_in_a_batch_is_held_on_its_own(books) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    with db.session() as s, s.begin():
        budgeted, _ = create_key(s, SecretBox(b"b" * 32), s.get(Account, account_id))
        budgeted.budget = 25
        budgeted_id = budgeted.id
    plain = Principal(key_id, account_id, None)
    tight = Principal(budgeted_id, account_id, None, budgeted=True)
    answers = meter.admit_many([*_asks(plain, ["p1"]), *_asks(tight, ["t1", "t2"], max_tokens=5),
                                *_asks(plain, ["p2"])])
    # The budget (25) covers one hold of 10 + 2 * 5 = 20.
    assert [type(a) for a in answers] == [Admission, Admission, BudgetExceeded, Admission]
    with db.session() as s:
        assert s.get(ApiKey, budgeted_id).held == 20
        assert balance(s, account_id) == folded_balance(s, account_id)


def test_a_settlement_with_a_finish_in_a_batch_commits_with_its_own_write(books, round_trips) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    principal = Principal(key_id, account_id, None)
    admitted = meter.admit_many(_asks(principal, ["s1", "lost", "s2"]))
    finished: list[str] = []

    def lost_lease(conn, outcome) -> bool:  # type: ignore[no-untyped-def]
        finished.append(outcome.status)
        return False  # the work passed to another worker: settled unbilled

    outcome = Outcome(RequestStatus.OK, 0, 5, "stop", 0.0, 1.0, 2.0)
    asks = [SettlementAsk(admitted[0], outcome), SettlementAsk(admitted[1], outcome, lost_lease),
            SettlementAsk(admitted[2], outcome)]
    assert meter.settle_many(asks) == [None] * 3
    assert finished == [RequestStatus.OK]
    each = 10 * 1 + 5 * 2
    with db.session() as s:
        assert balance(s, account_id) == folded_balance(s, account_id) == TOPUP - 2 * each
        costs = dict(s.execute(select(UsageRecord.request_id, UsageRecord.cost)
                               .where(UsageRecord.account_id == account_id)).all())
    assert costs == {"s1": each, "lost": 0, "s2": each}
    if not meter.in_process:  # the two without a finish went together; the other on its own
        assert round_trips[-1] == ("pg_settle_hold", 2, "ok")


@pytest.mark.parametrize("books", ["postgresql+redis"], indirect=True)  # SQLite runs no batch
def test_a_store_that_fails_every_batch_still_serves_each_step_alone_and_says_so(  # type: ignore[no-untyped-def]
        books, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    db, meter, key_id, account_id = books

    def fail(engine, steps):  # type: ignore[no-untyped-def]
        raise RuntimeError("pipeline mode unavailable")

    monkeypatch.setattr(metering, "run_in_one_round_trip", fail)
    principal = Principal(key_id, account_id, None)
    with caplog.at_level(logging.DEBUG, logger="glmaas.books"):
        admitted = meter.admit_many(_asks(principal, ["f1", "f2", "f3"]))
        assert all(isinstance(a, Admission) for a in admitted)
        assert meter.progress_many([(a, 1, 0) for a in admitted]) == [None] * 3
        outcome = Outcome(RequestStatus.OK, 0, 5, "stop", 0.0, 1.0, 2.0)
        assert meter.settle_many([SettlementAsk(a, outcome) for a in admitted]) == [None] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"a group commit of 3 {what} failed (RuntimeError); each runs on its own"
                        for what in ("holds", "progress writes", "settlements")]
    with db.session() as s:
        assert balance(s, account_id) == folded_balance(s, account_id) == TOPUP - 3 * (10 * 1 + 5 * 2)


def test_one_admission_settled_twice_in_one_batch_is_settled_once(books) -> None:  # type: ignore[no-untyped-def]
    db, meter, key_id, account_id = books
    (admission, other) = meter.admit_many(_asks(Principal(key_id, account_id, None), ["settled-twice", "settled-once"]))
    told: list[tuple[str, int | None]] = []
    meter.observers.append(lambda ticket, outcome, settlement: told.append(
        (ticket.request_id, settlement and settlement.cost)))
    outcome = Outcome(RequestStatus.OK, 0, 5, "stop", 0.0, 1.0, 2.0)
    asks = [SettlementAsk(admission, outcome), SettlementAsk(other, outcome), SettlementAsk(admission, outcome)]
    assert meter.settle_many(asks) == [None] * 3
    assert sorted(told) == [("settled-once", 20), ("settled-twice", 20)]  # the observers hear of each once
    assert meter.open_by_model == {}
    with db.session() as s:
        assert balance(s, account_id) == folded_balance(s, account_id) == TOPUP - 2 * (10 * 1 + 5 * 2)
