"""Pruning old usage rows keeps the daily totals, so reports stay exact."""

from __future__ import annotations

import time
from pathlib import Path

from glmaas.platform.accounts import create_account
from glmaas.platform.admin import usage_report
from glmaas.platform.keys import create_key
from glmaas.platform.ledger import Outcome, place_hold, settle_hold
from glmaas.platform.pricing import PriceSheet
from glmaas.platform.retention import prune_usage_records
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database, sqlite_url
from glmaas.store.tables import UsageRecord


def test_old_rows_go_and_daily_totals_stay(tmp_path: Path) -> None:
    db = open_database(sqlite_url(tmp_path))
    with db.session() as s, s.begin():
        account = create_account(s, "r")
        key, _ = create_key(s, SecretBox(b"m" * 32), account)
        for i in range(3):
            ticket = place_hold(s.connection(), request_id=f"q{i}", account_id=account.id, key_id=key.id,
                                model="m", price=PriceSheet(0, 0, 0), prompt_tokens=10, max_tokens=5, owner="o")
            settle_hold(s.connection(), ticket, Outcome("ok", 0, 5, "length", 0, None, 0))
    with db.session() as s, s.begin():
        assert prune_usage_records(s, retention_days=1) == 0
        assert prune_usage_records(s, retention_days=1, now=time.time() + 2 * 86400) == 3
    with db.session() as s:
        assert s.query(UsageRecord).count() == 0
        (row,) = usage_report(s, ("account", "model"))
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (3, 30, 15)
    db.dispose()
