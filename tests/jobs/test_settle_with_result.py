"""A background request's result commits with its settlement, or not at all."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from glmaas.platform.accounts import create_account
from glmaas.platform.auth import Principal
from glmaas.platform.keys import create_key
from glmaas.platform.ledger import credit
from glmaas.platform.limits import LocalLimiter
from glmaas.platform.metering import Meter, Outcome, RequestStatus, SettledElsewhere
from glmaas.platform.recovery import recover
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import open_database, sqlite_url

OK = Outcome(status=RequestStatus.OK, cached_tokens=0, completion_tokens=5, finish_reason="stop",
             queue_ms=0.0, first_token_ms=None, total_ms=1.0)


@pytest.fixture()
def meter(tmp_path):  # type: ignore[no-untyped-def]
    db = open_database(sqlite_url(tmp_path))
    with db.session() as s, s.begin():
        account = create_account(s, "acme")
        key, _ = create_key(s, SecretBox(b"r" * 32), account)
        credit(s, account.id, "topup", 1_000_000)
        principal = Principal(key.id, account.id, None)
    # An owner on another host with no heartbeat: any survivor takes it for dead.
    yield db, Meter(db.engine, LocalLimiter(), "gone-host:4242:1"), principal
    db.dispose()


def written(db) -> list[str]:  # type: ignore[no-untyped-def]
    with db.engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT note FROM ledger_entries WHERE kind = 'adjustment'"))]


def write_result(conn, _outcome) -> bool:  # type: ignore[no-untyped-def]
    # Any write stands for the result; an adjustment of 0 is easy to find again.
    conn.execute(text("INSERT INTO ledger_entries (account_id, kind, amount, note, created_at) "
                      "SELECT account_id, 'adjustment', 0, 'result', 0 FROM holds LIMIT 1"))
    return True


def test_the_result_commits_with_the_settlement(meter) -> None:  # type: ignore[no-untyped-def]
    db, m, principal = meter
    admission = m.admit(principal, "m", "line~1", 10, 20)
    m.settle(admission, OK, write_result)
    assert written(db) == ["result"]
    assert m.open_by_model == {}


def test_a_hold_recovered_first_rolls_the_result_back(meter) -> None:  # type: ignore[no-untyped-def]
    db, m, principal = meter
    admission = m.admit(principal, "m", "line~1", 10, 20)
    assert recover(db.session, "survivor-host:1:1") == 1  # this replica was taken for dead
    with pytest.raises(SettledElsewhere):
        m.settle(admission, OK, write_result)
    assert written(db) == []
    assert m.open_by_model == {}
