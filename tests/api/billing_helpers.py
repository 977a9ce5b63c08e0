"""Helpers for the billing tests: an operator's view of a running server's books (a server process
or the app in process alike)."""

from __future__ import annotations

import sqlite3

import httpx

from tests.conftest import ServerUnderTest

# Prices used by these tests, in units of currency per million tokens: input 2, cached 1, output 10,
# so a request costs 2 micro-units per prompt token and 10 per completion token.
INPUT, CACHED, OUTPUT = 2, 1, 10


def admin(server: ServerUnderTest) -> httpx.Client:
    token = (server.data_dir / "admin.token").read_text().strip()
    return server.client(headers={"Authorization": f"Bearer {token}"}, timeout=10)


def price_all(server: ServerUnderTest, *models: str) -> None:
    with admin(server) as client:
        for model in models:
            r = client.put(f"/admin/prices/{model}",
                           json={"input": str(INPUT), "cached_input": str(CACHED), "output": str(OUTPUT)})
            assert r.status_code == 200, r.text


def funded_key(server: ServerUnderTest, account: str, amount: str,
               **key_options) -> str:  # type: ignore[no-untyped-def]
    with admin(server) as client:
        assert client.post("/admin/accounts", json={"name": account}).status_code == 201
        if amount != "0":
            assert client.post(f"/admin/accounts/{account}/topup", json={"amount": amount}).status_code == 200
        r = client.post("/admin/keys", json={"account": account, **key_options})
        assert r.status_code == 201, r.text
        return r.json()["key"]


def balance_micro(server: ServerUnderTest, account: str) -> int:
    with admin(server) as client:
        return client.get(f"/admin/accounts/{account}").json()["balance_micro"]


def query(server: ServerUnderTest, sql: str, *args: object) -> list[sqlite3.Row]:
    con = sqlite3.connect(server.data_dir / "glmaas.db", timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def expected_cost(prompt: int, completion: int) -> int:
    return prompt * INPUT + completion * OUTPUT


def assert_books_balance(server: ServerUnderTest) -> None:
    """Every cached balance equals the sum of its entries; no hold is left open."""
    bad = query(server, """SELECT a.name, a.balance, COALESCE(SUM(e.amount), 0) AS folded
                           FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id
                           GROUP BY a.id HAVING a.balance != COALESCE(SUM(e.amount), 0)""")
    assert not bad, [dict(r) for r in bad]
    twice = query(server, """SELECT request_id, COUNT(*) FROM ledger_entries WHERE kind = 'settlement'
                             GROUP BY account_id, request_id HAVING COUNT(*) > 1""")
    assert not twice
