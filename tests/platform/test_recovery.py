"""Crash recovery on SQLite: a dead replica's holds are settled from their durable progress, and a
request that made nothing durable is released with nothing charged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from glmaas.platform.accounts import create_account
from glmaas.platform.keys import create_key
from glmaas.platform.ledger import (
    balance,
    credit,
    folded_balance,
    place_hold,
    record_progress,
)
from glmaas.platform.pricing import PriceSheet, cost
from glmaas.platform.recovery import heartbeat, recover
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import Database, open_database, sqlite_url
from glmaas.store.tables import Hold, LedgerEntry, Replica, UsageRecord

PRICE = PriceSheet(input=2_000_000, cached_input=1_000_000, output=10_000_000)  # 2, 1, 10 per token
TOPUP = 1_000_000
# A replica on another host with no heartbeat row: dead for any survivor.
DEAD = "gone-host:4242:1"
ME = "survivor-host:1:1"


@pytest.fixture()
def books(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = open_database(sqlite_url(tmp_path))
    with db.session() as s, s.begin():
        account = create_account(s, "acme")
        key, _ = create_key(s, SecretBox(b"r" * 32), account)
        credit(s, account.id, "topup", TOPUP)
        ids = account.id, key.id
    yield db, *ids
    db.dispose()


def _admit(db: Database, account: str, key: str, request_id: str, owner: str = DEAD,
           prompt: int = 30, max_tokens: int = 100) -> int:
    with db.session() as s, s.begin():
        ticket = place_hold(s.connection(), request_id=request_id, account_id=account, key_id=key, model="m",
                            price=PRICE, prompt_tokens=prompt, max_tokens=max_tokens, owner=owner)
    return ticket.amount


def _progress(db: Database, account: str, request_id: str, tokens: int, cached: int = 0) -> None:
    with db.session() as s, s.begin():
        record_progress(s.connection(), account, request_id, tokens, cached)


def _usage(db: Database, request_id: str) -> UsageRecord:
    with db.session() as s:
        (row,) = s.scalars(select(UsageRecord).where(UsageRecord.request_id == request_id))
        return row


def _net(db: Database, request_id: str) -> int:
    with db.session() as s:
        return sum(s.scalars(select(LedgerEntry.amount).where(LedgerEntry.request_id == request_id)))


def test_a_request_with_nothing_durable_is_released_unbilled(books) -> None:  # type: ignore[no-untyped-def]
    db, account, key = books
    assert _admit(db, account, key, "plain") > 0
    assert recover(db.session, ME) == 1
    usage = _usage(db, "plain")
    assert (usage.status, usage.prompt_tokens, usage.completion_tokens, usage.cost) == ("recovered", 30, 0, 0)
    assert _net(db, "plain") == 0
    with db.session() as s:
        assert balance(s, account) == folded_balance(s, account) == TOPUP


def test_a_stream_is_charged_its_prompt_and_durable_tokens(books) -> None:  # type: ignore[no-untyped-def]
    db, account, key = books
    _admit(db, account, key, "stream")
    _progress(db, account, "stream", 17, cached=10)
    assert recover(db.session, ME) == 1
    expected = cost(PRICE, 30, 10, 17)
    usage = _usage(db, "stream")
    assert (usage.status, usage.completion_tokens, usage.cost) == ("recovered", 17, expected)
    assert _net(db, "stream") == -expected
    with db.session() as s:
        assert balance(s, account) == folded_balance(s, account) == TOPUP - expected


def test_each_dead_hold_settles_once_and_live_ones_stay_open(books) -> None:  # type: ignore[no-untyped-def]
    db, account, key = books
    live = "live-host:7:1"
    with db.session() as s, s.begin():
        heartbeat(s, live)
    _admit(db, account, key, "a")
    _admit(db, account, key, "b")
    _progress(db, account, "b", 1)
    _admit(db, account, key, "running", owner=live)
    forgotten: list[str] = []
    assert recover(db.session, ME, forget=lambda request, scopes: forgotten.append(request)) == 2
    assert recover(db.session, ME) == 0
    assert sorted(forgotten) == [f"{account}/a", f"{account}/b"]
    assert [_usage(db, r).cost for r in ("a", "b")] == [0, cost(PRICE, 30, 0, 1)]
    with db.session() as s:
        states = dict(s.execute(select(Hold.request_id, Hold.state)).all())
        assert states["running"] == "open" and states["a"] != "open" and states["b"] != "open"
        assert s.get(Replica, live) is not None


def test_a_stale_heartbeat_makes_a_replica_dead(books) -> None:  # type: ignore[no-untyped-def]
    db, account, key = books
    stale = "other-host:9:1"
    with db.session() as s, s.begin():
        s.add(Replica(id=stale, heartbeat_at=time.time() - 60))
    _admit(db, account, key, "late", owner=stale)
    assert recover(db.session, ME) == 1
    assert _usage(db, "late").cost == 0
    with db.session() as s:
        assert s.get(Replica, stale) is None  # retired once its holds are settled
