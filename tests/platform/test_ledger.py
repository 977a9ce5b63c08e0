"""Ledger conservation and hold/settle arithmetic, on a real SQLite database."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from glmaas.platform.accounts import create_account
from glmaas.platform.errors import BudgetExceeded, InsufficientBalance
from glmaas.platform.keys import create_key
from glmaas.platform.ledger import (
    Outcome,
    _day,
    balance,
    credit,
    folded_balance,
    place_hold,
    settle_hold,
)
from glmaas.platform.pricing import PriceSheet, cost, hold_amount
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database, sqlite_url
from glmaas.store.tables import ApiKey, UsageRecord

_ids = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The same ledger on SQLite and on PostgreSQL, whose steps are single statements."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path_factory.mktemp("ledger"))
    else:
        url = request.getfixturevalue("pg_url")
    database = open_database(url)
    yield database
    database.dispose()


def _facts(produced: int, cached: int = 0) -> Outcome:
    return Outcome("ok", cached, produced, "stop", 0.0, None, 0.0)


def _account_with_key(db, budget: int | None = None):  # type: ignore[no-untyped-def]
    box = SecretBox(b"k" * 32)
    with db.session() as s, s.begin():
        account = create_account(s, f"ledger-acct-{next(_ids)}")
        row, _ = create_key(s, box, account)
        row.budget = budget
        return account.id, row.id


requests = st.lists(
    st.tuples(st.integers(1, 3000), st.integers(1, 2000), st.floats(0, 1), st.booleans()),
    min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 50_000), requests,
       st.builds(PriceSheet, st.integers(0, 20_000_000), st.integers(0, 5_000_000), st.integers(0, 60_000_000)))
def test_balance_is_the_sum_of_entries_and_only_exact_costs_are_charged(db, topup, reqs, price) -> None:  # type: ignore[no-untyped-def]
    account, key = _account_with_key(db)
    with db.session() as s, s.begin():
        if topup:
            credit(s, account, "topup", topup)
    expected = topup
    open_tickets = []
    for prompt, max_tokens, frac, settle_now in reqs:
        rid = f"r{next(_ids)}"
        try:
            with db.session() as s, s.begin():
                ticket = place_hold(s.connection(), request_id=rid, account_id=account, key_id=key, model="m",
                                    price=price, prompt_tokens=prompt, max_tokens=max_tokens, owner="o",
                                    budgeted=False)
        except InsufficientBalance:
            assert hold_amount(price, prompt, max_tokens) > expected - sum(t.amount for t, _ in open_tickets)
            continue
        open_tickets.append((ticket, int(frac * max_tokens)))
        if settle_now:
            t, produced = open_tickets.pop()
            with db.session() as s, s.begin():
                assert settle_hold(s.connection(), t, _facts(produced)) is not None
            expected -= cost(price, prompt, 0, produced)
        with db.session() as s:
            assert balance(s, account) == folded_balance(s, account) >= 0
    for t, produced in open_tickets:
        with db.session() as s, s.begin():
            settle_hold(s.connection(), t, _facts(produced))
        expected -= cost(price, t.prompt_tokens, 0, produced)
    with db.session() as s:
        assert balance(s, account) == folded_balance(s, account) == expected


def test_a_hold_settles_once(db) -> None:  # type: ignore[no-untyped-def]
    account, key = _account_with_key(db)
    price = PriceSheet(1_000_000, 1_000_000, 1_000_000)
    with db.session() as s, s.begin():
        credit(s, account, "topup", 10_000)
        ticket = place_hold(s.connection(), request_id="once", account_id=account, key_id=key, model="m", price=price,
                            prompt_tokens=100, max_tokens=100, owner="o", budgeted=False)
    with db.session() as s, s.begin():
        first = settle_hold(s.connection(), ticket, _facts(40))
    with db.session() as s, s.begin():
        second = settle_hold(s.connection(), ticket, _facts(100))
    assert first is not None and first.cost == 140 and second is None
    with db.session() as s:
        assert balance(s, account) == 10_000 - 140 == folded_balance(s, account)
        row = s.get(ApiKey, key)
        assert (row.held, row.spent) == (0, 140)
        (usage,) = s.scalars(select(UsageRecord).where(UsageRecord.account_id == account,
                                                        UsageRecord.request_id == "once")).all()
        assert (usage.completion_tokens, usage.cost) == (40, 140)


def test_not_enough_balance_refuses_and_changes_nothing(db) -> None:  # type: ignore[no-untyped-def]
    account, key = _account_with_key(db)
    price = PriceSheet(0, 0, 1_000_000)
    with db.session() as s, s.begin():
        credit(s, account, "topup", 99)
    with pytest.raises(InsufficientBalance), db.session() as s, s.begin():
        place_hold(s.connection(), request_id="poor", account_id=account, key_id=key, model="m", price=price,
                   prompt_tokens=5, max_tokens=100, owner="o", budgeted=False)
    with db.session() as s:
        assert balance(s, account) == folded_balance(s, account) == 99


def test_key_budget_caps_spend(db) -> None:  # type: ignore[no-untyped-def]
    account, key = _account_with_key(db, budget=150)
    price = PriceSheet(0, 0, 1_000_000)
    with db.session() as s, s.begin():
        credit(s, account, "topup", 10_000)
        place_hold(s.connection(), request_id="b1", account_id=account, key_id=key, model="m", price=price,
                   prompt_tokens=1, max_tokens=100, owner="o")
    with pytest.raises(BudgetExceeded), db.session() as s, s.begin():
        place_hold(s.connection(), request_id="b2", account_id=account, key_id=key, model="m", price=price,
                   prompt_tokens=1, max_tokens=100, owner="o")
    with db.session() as s:
        assert balance(s, account) == folded_balance(s, account) == 10_000 - 100


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_the_day_totals_are_named_by_the_utc_day_of_the_settlement(now: float) -> None:
    assert _day(now) == dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")
