"""What the console reads from the platform (accounts at a glance, the ledger's latest entries,
keys with their limits) and the sealing of the state it hands a browser, on a real SQLite file."""

from __future__ import annotations

import time

import pytest

from glmaas.platform import admin
from glmaas.platform.keys import revoke_key
from glmaas.platform.ledger import EntryKind, Outcome, place_hold, settle_hold
from glmaas.platform.pricing import PriceSheet
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database, sqlite_url

BOX = SecretBox(b"m" * 32)


@pytest.fixture
def db(tmp_path):  # type: ignore[no-untyped-def]
    database = open_database(sqlite_url(tmp_path))
    yield database
    database.dispose()


def test_sealed_state_opens_only_for_its_purpose_and_box() -> None:
    sealed = BOX.seal_state(b'{"role": "operator"}', purpose="console session v1")
    assert BOX.open_state(sealed, purpose="console session v1") == b'{"role": "operator"}'
    assert "operator" not in sealed
    assert BOX.open_state(sealed, purpose="something else") is None
    assert SecretBox(b"n" * 32).open_state(sealed, purpose="console session v1") is None
    altered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    for bad in (altered, "", "x", "%%%", sealed[:10]):
        assert BOX.open_state(bad, purpose="console session v1") is None


def test_accounts_overview_counts_usable_keys_and_open_holds(db) -> None:  # type: ignore[no-untyped-def]
    with db.session() as s, s.begin():
        admin.new_account(s, "b-co")
        account = admin.new_account(s, "a-co")
        admin.topup(s, "a-co", 5_000_000)
        admin.new_key(s, BOX, "a-co", admin.KeyOptions(name="live"))
        view, _ = admin.new_key(s, BOX, "a-co", admin.KeyOptions(name="old"))
        revoke_key(s, view["id"])
        admin.new_key(s, BOX, "a-co", admin.KeyOptions(name="past", expires_at=time.time() - 1))
        live = admin.keys_with_limits(s, "a-co")[0]
        place_hold(s.connection(), request_id="r1", account_id=account["id"], key_id=live["id"], model="m", price=PriceSheet(1_000_000, 1_000_000, 1_000_000),
                   prompt_tokens=10, max_tokens=20, owner="test")
    with db.session() as s:
        overview = admin.accounts_overview(s)
    assert [a["name"] for a in overview] == ["a-co", "b-co"]
    assert overview[0]["keys"] == 3 and overview[0]["usable_keys"] == 1
    assert overview[0]["held_micro"] == 30 and overview[0]["balance_micro"] == 5_000_000 - 30
    assert overview[1]["keys"] == 0 and overview[1]["held_micro"] == 0


def test_ledger_entries_newest_first_of_the_kinds_asked(db) -> None:  # type: ignore[no-untyped-def]
    with db.session() as s, s.begin():
        account = admin.new_account(s, "l-co")
        admin.topup(s, "l-co", 1_000_000, "first")
        view, _ = admin.new_key(s, BOX, "l-co", admin.KeyOptions())
        ticket = place_hold(s.connection(), request_id="r2", account_id=account["id"], key_id=view["id"], model="m",
                            price=PriceSheet(1_000_000, 1_000_000, 1_000_000), prompt_tokens=4, max_tokens=4,
                            owner="test")
        settle_hold(s.connection(), ticket, Outcome("ok", 0, 2, "stop", 0.0, None, 0.0))
        admin.adjust(s, "l-co", -5, "correction")
    with db.session() as s:
        every = admin.ledger_entries(s, "l-co")
        money = admin.ledger_entries(s, "l-co", kinds=[EntryKind.TOPUP, EntryKind.ADJUSTMENT, EntryKind.SETTLEMENT])
    assert [e["kind"] for e in every] == ["adjustment", "settlement", "release", "hold", "topup"]
    assert [e["kind"] for e in money] == ["adjustment", "settlement", "topup"]
    assert money[0]["note"] == "correction" and money[1]["amount_micro"] == -6
    assert sum(e["amount_micro"] for e in every) == 1_000_000 - 6 - 5


def test_keys_with_limits_show_the_keys_limits_and_budget(db) -> None:  # type: ignore[no-untyped-def]
    with db.session() as s, s.begin():
        admin.new_account(s, "k-co")
        admin.new_key(s, BOX, "k-co", admin.KeyOptions(name="ci", models=("m",), rpm=60, tpm=1000, concurrency=2,
                                                          budget=3_000_000))
    with db.session() as s:
        [key] = admin.keys_with_limits(s, "k-co")
    assert (key["name"], key["allowed_models"]) == ("ci", ("m",))
    assert (key["rpm"], key["tpm"], key["concurrency"]) == (60, 1000, 2)
    assert key["budget_micro"] == 3_000_000 and key["spent_micro"] == 0 and key["account"] == "k-co"
