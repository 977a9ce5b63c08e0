"""`/healthz` and `/readyz`: ready when every part is, 503 naming the part that is not.

The app runs in this process; a failing part is made by pointing the replica at a port nothing
listens on (its database, its Redis) or by moving the schema off the newest migration."""

from __future__ import annotations

import sqlite3

import pytest
import redis
from sqlalchemy import create_engine

from glmaas.benchmarks.harness import free_port
from glmaas.store.db import Database
from tests.api.billing_helpers import admin
from tests.inprocess import AppServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = AppServer(tmp_path_factory.mktemp("probes"), "--no-default-model", "--model", "mock=mock",
                    "--model", "other=mock")
    yield srv
    srv.stop()


def readyz(server: AppServer) -> tuple[int, dict]:
    with server.client() as client:
        r = client.get("/readyz")
    return r.status_code, r.json()


def test_a_healthy_replica_is_alive_and_ready(server: AppServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
    status, body = readyz(server)
    assert status == 200 and body["failing"] == []
    assert body["parts"] == {"database": "ok", "models": {"mock": "ok", "other": "ok"}}


def test_an_unreachable_database_fails_readiness_not_health(server: AppServer) -> None:
    state = server.app.state.glmaas
    working = state.db
    dead = create_engine(f"postgresql+psycopg://glmaas@127.0.0.1:{free_port()}/glmaas?connect_timeout=2")
    state.db = type("DeadDatabase", (), {"engine": dead})()
    try:
        status, body = readyz(server)
        with server.client() as client:
            alive = client.get("/healthz").status_code
    finally:
        state.db = working
        dead.dispose()
    assert status == 503 and body["failing"] == ["database"] and body["parts"]["database"] == "unreachable"
    assert alive == 200
    assert readyz(server)[0] == 200


def test_a_schema_behind_the_code_fails_readiness(server: AppServer) -> None:
    db = sqlite3.connect(server.data_dir / "glmaas.db", timeout=10)
    (head,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    try:
        with db:
            db.execute("UPDATE alembic_version SET version_num = '0002_billing'")
        status, body = readyz(server)
    finally:
        with db:
            db.execute("UPDATE alembic_version SET version_num = ?", (head,))
        db.close()
    assert status == 503 and body["failing"] == ["database"]
    assert body["parts"]["database"] == f"schema at 0002_billing; this version needs {head}"
    assert readyz(server)[0] == 200


def test_an_unreachable_redis_fails_readiness(server: AppServer) -> None:
    state = server.app.state.glmaas
    state.redis = redis.Redis(port=free_port(), socket_connect_timeout=2)
    try:
        status, body = readyz(server)
    finally:
        state.redis = None
    assert status == 503 and body["failing"] == ["redis"] and body["parts"]["redis"] == "unreachable"


def test_a_draining_replica_is_not_ready_and_refuses_new_requests_in_both_dialects(server: AppServer) -> None:
    drain = server.app.state.operations.drain
    key = server.create_key()
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    drain.begin()
    try:
        status, ready = readyz(server)
        with server.client(headers={"Authorization": f"Bearer {key}"}) as client:
            alive = client.get("/healthz").status_code
            openai = client.post("/v1/chat/completions", json=body)
            zhipu = client.post("/api/paas/v4/chat/completions", json=body)
        with admin(server) as client:  # scrapes are answered while draining
            metrics = client.get("/metrics")
    finally:
        drain.draining = False
    assert 'glmaas_refusals_total{code="shutting_down"} 2.0' in metrics.text
    assert "glmaas_draining 1.0" in metrics.text
    assert status == 503 and ready["failing"] == ["shutdown"] and ready["parts"]["shutdown"] == "draining"
    assert alive == 200
    for refused in (openai, zhipu):
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1" and refused.headers["x-should-retry"] == "true"
    assert openai.json()["error"]["type"] == "server_error"
    assert openai.json()["error"]["code"] == "service_unavailable"
    assert zhipu.json()["error"]["code"] == "1305"


def test_readiness_with_postgresql_and_redis(tmp_path, pg_url: str, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    server = AppServer(tmp_path, "--no-default-model", "--model", "mock=mock", "--database-url", pg_url,
                       "--redis-url", redis_url)
    try:
        status, body = readyz(server)
        assert status == 200 and body["parts"]["database"] == "ok" and body["parts"]["redis"] == "ok"
        assert isinstance(server.app.state.glmaas.db, Database)
    finally:
        server.stop()
