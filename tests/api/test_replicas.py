"""Two `glmaas serve` replicas on one PostgreSQL database and one Redis share the books and the
limits, with every guarantee of a single replica."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.billing_helpers import admin, funded_key, price_all
from tests.api.test_crash_recovery import Client
from tests.api.test_rate_limits import hammer
from tests.conftest import start_server

MODELS = ("--no-default-model", "--model", "mock=mock", "--model", "stream=mock:delay=0.01,reply=ab,repeat=150")
BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str):
    shared = ("--database-url", pg_url, "--redis-url", redis_url)
    env = {"GLMAAS_ADMIN_TOKEN": "glmaas-admin-test-replicas",
           "GLMAAS_MASTER_KEY": "c2hhcmVkLW1hc3Rlci1rZXktZm9yLXJlcGxpY2EtdGVzdHM"}
    a = start_server(tmp_path_factory.mktemp("replica-a"), *MODELS, *shared, env=env)
    b = start_server(tmp_path_factory.mktemp("replica-b"), *MODELS, *shared, env=env)
    for srv in (a, b):
        (srv.data_dir / "admin.token").write_text(env["GLMAAS_ADMIN_TOKEN"])
    price_all(a, "mock", "stream")
    yield a, b, pg_url, redis_url
    a.stop()
    b.stop()


def _pg(url: str, sql: str, *args: object) -> list[tuple]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        return con.execute(sql, args).fetchall()


def _books_balance(url: str) -> None:
    bad = _pg(url, """SELECT a.name FROM accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id
                      GROUP BY a.id HAVING a.balance != COALESCE(SUM(e.amount), 0)""")
    assert not bad
    assert not _pg(url, """SELECT request_id FROM ledger_entries WHERE kind = 'settlement'
                           GROUP BY account_id, request_id HAVING COUNT(*) > 1""")


def test_rpm_is_not_overshot_across_replicas(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, url, _ = replicas
    key = funded_key(a, "shared-rpm", "1", rpm=10)
    responses = hammer([a.zhipu_url, b.openai_url, b.zhipu_url, a.openai_url], key)
    assert sum(r.status_code == 200 for r in responses) == 10
    assert sum(r.status_code == 429 for r in responses) == 40


def test_one_balance_seen_and_spent_from_both(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, url, _ = replicas
    key = funded_key(b, "shared-money", "1")
    spent = 0
    for srv in (a, b, a, b):
        r = httpx.post(f"{srv.zhipu_url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
        usage = r.json()["usage"]
        spent += usage["prompt_tokens"] * 2 + usage["completion_tokens"] * 10
    for srv in (a, b):
        with admin(srv) as client:
            assert client.get("/admin/accounts/shared-money").json()["balance_micro"] == 1_000_000 - spent
    _books_balance(url)


def test_a_burst_on_both_replicas_is_billed_once_per_request_as_each_client_was_told(replicas) -> None:  # type: ignore[no-untyped-def]
    """Concurrent requests, streamed and not, on both replicas: their books' steps go to
    PostgreSQL and Redis in shared round trips (group commit), from two processes at once."""
    a, b, url, _ = replicas
    key = funded_key(a, "shared-burst", "10")
    auth = {"Authorization": f"Bearer {key}"}

    async def one(client: httpx.AsyncClient, i: int) -> int:
        srv = (a, b)[i % 2]
        body = {**BODY, "max_tokens": 2 + i % 5, "stream": i % 3 == 0}
        if body["stream"]:
            body["stream_options"] = {"include_usage": True}
            async with client.stream("POST", f"{srv.openai_url}/chat/completions", json=body, headers=auth) as r:
                assert r.status_code == 200
                chunks = [json.loads(line[6:]) async for line in r.aiter_lines()
                          if line.startswith("data: {")]
            usage = chunks[-1]["usage"]
        else:
            r = await client.post(f"{srv.openai_url}/chat/completions", json=body, headers=auth)
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
        return usage["prompt_tokens"] * 2 + usage["completion_tokens"] * 10

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(one(client, i) for i in range(48)))

    told = asyncio.run(burst())
    with admin(a) as client:
        assert client.get("/admin/accounts/shared-burst").json()["balance_micro"] == 10_000_000 - sum(told)
    (records,) = _pg(url, """SELECT COUNT(*) FROM usage_records u JOIN accounts a ON a.id = u.account_id
                              WHERE a.name = 'shared-burst'""")
    assert records == (48,)
    # Each replica counts its round trips: at most one per step, fewer when steps shared one.
    for srv, served in ((a, 24), (b, 24)):
        with admin(srv) as client:
            metrics = {(m.name, m.labels.get("step")): m.value
                       for f in text_string_to_metric_families(client.get("/metrics").text) for m in f.samples}
        for step in ("admission", "settlement"):
            steps, batches = metrics[("glmaas_books_steps_total", step)], metrics[("glmaas_books_batches_total", step)]
            assert steps >= served and 1 <= batches <= steps
    assert not _pg(url, """SELECT h.request_id FROM holds h JOIN accounts a ON a.id = h.account_id
                           WHERE a.name = 'shared-burst' AND h.state = 'open'""")
    _books_balance(url)


def test_revocation_reaches_every_replica_within_a_second(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, _, _ = replicas
    key = funded_key(a, "revoker", "1")
    for srv in (a, b):
        assert httpx.post(f"{srv.openai_url}/chat/completions", json=BODY,
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200
    with admin(a) as client:
        client.delete(f"/admin/keys/{key.split('.')[0]}")
    time.sleep(1.1)
    for srv in (a, b):
        assert httpx.post(f"{srv.openai_url}/chat/completions", json=BODY,
                          headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_a_dead_replicas_holds_are_settled_by_the_survivor(replicas, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b, url, redis_url = replicas
    key = funded_key(a, "orphaned", "10")
    # A third replica that will die mid-stream.
    args = [*MODELS, "--database-url", url, "--redis-url", redis_url]
    victim = start_server(tmp_path / "victim", *args, env=a.env)
    clients = [Client(victim.zhipu_url, key, f"orphan-{i}") for i in range(20)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    for c in clients:
        c.join(10)
    deadline = time.monotonic() + 15
    while _pg(url, "SELECT 1 FROM holds WHERE state = 'open'") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _pg(url, "SELECT 1 FROM holds WHERE state = 'open'")
    for c in clients:
        rows = _pg(url, "SELECT completion_tokens FROM usage_records WHERE request_id = %s", c.request_id)
        if c.delivered:
            assert len(rows) == 1 and c.delivered - 15 <= rows[0][0] <= c.delivered + 1
    _books_balance(url)
