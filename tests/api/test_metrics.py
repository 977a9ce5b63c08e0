"""`GET /metrics`: Prometheus text that moves as requests are made and refused.

The app runs in this process (`tests.inprocess.AppServer`); every scrape is parsed with
prometheus_client's own parser."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from glmaas.benchmarks.harness import free_port
from tests.api.billing_helpers import admin, balance_micro, funded_key, price_all
from tests.inprocess import AppServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    dead = free_port()  # nothing listens there: the upstream is refused and ejected
    srv = AppServer(tmp_path_factory.mktemp("metrics"), "--no-default-model", "--model", "mock=mock",
                    "--model", "slow=mock:delay=0.05", "--model", "free=mock",
                    "--model", f"remote=openai+http://127.0.0.1:{dead}/v1,model=m,health_interval=3600")
    price_all(srv, "mock", "slow")
    yield srv
    srv.stop()


def scrape(server: AppServer) -> Samples:
    with admin(server) as client:
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(server: AppServer, key: str, model: str = "mock", *, zhipu: bool = False,
         **body) -> httpx.Response:  # type: ignore[no-untyped-def]
    url = server.zhipu_url if zhipu else server.openai_url
    with server.client(timeout=30) as client:
        return client.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


def test_metrics_need_the_admin_token(server: AppServer) -> None:
    with server.client() as client:
        refused = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert refused.status_code == wrong.status_code == 401
    assert "glmaas_" not in refused.text


def test_requests_tokens_latency_and_money_move_with_each_request(server: AppServer) -> None:
    key = funded_key(server, "metrics-acct", "10")
    before, balance_before = scrape(server), balance_micro(server, "metrics-acct")
    whole = chat(server, key)
    streamed = chat(server, key, zhipu=True, stream=True, stream_options={"include_usage": True})
    assert whole.status_code == streamed.status_code == 200
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    openai_chat = {"endpoint": "/v1/chat/completions", "dialect": "openai", "model": "mock", "status": "200"}
    zhipu_chat = {"endpoint": "/api/paas/v4/chat/completions", "dialect": "zhipu", "model": "mock", "status": "200"}
    assert moved("glmaas_requests_total", **openai_chat) == 1
    assert moved("glmaas_requests_total", **zhipu_chat) == 1
    usage = whole.json()["usage"]
    assert moved("glmaas_prompt_tokens_total", model="mock") == 2 * usage["prompt_tokens"]
    assert moved("glmaas_completion_tokens_total", model="mock") == 2 * usage["completion_tokens"]
    assert moved("glmaas_settled_requests_total", model="mock", status="ok") == 2
    for histogram in ("glmaas_request_duration_seconds", "glmaas_time_to_first_token_seconds",
                      "glmaas_time_per_output_token_seconds", "glmaas_queue_time_seconds"):
        assert moved(f"{histogram}_count", model="mock") == 2, histogram
        assert moved(f"{histogram}_bucket", model="mock", le="+Inf") == 2, histogram
        assert moved(f"{histogram}_sum", model="mock") > 0, histogram
    # The money settled is what left the account.
    charged = balance_before - balance_micro(server, "metrics-acct")
    assert charged > 0 and moved("glmaas_settled_micro_units_total", model="mock") == charged
    assert value(after, "glmaas_open_holds", model="mock") == 0


def test_a_resource_that_generates_no_tokens_is_measured_by_the_same_settlement(server: AppServer) -> None:
    key = funded_key(server, "tokenizer-metrics", "10")
    before = scrape(server)
    with server.client() as client:
        r = client.post(f"{server.zhipu_url}/tokenizer", headers={"Authorization": f"Bearer {key}"},
                        json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    after = scrape(server)
    tokenizer = {"endpoint": "/api/paas/v4/tokenizer", "dialect": "zhipu", "model": "mock", "status": "200"}
    assert value(after, "glmaas_requests_total", **tokenizer) - value(before, "glmaas_requests_total", **tokenizer) == 1
    for name in ("glmaas_settled_requests_total", "glmaas_request_duration_seconds_count"):
        labels = {"model": "mock", "status": "ok"} if name.startswith("glmaas_settled") else {"model": "mock"}
        assert value(after, name, **labels) - value(before, name, **labels) == 1, name
    # No token was generated: no first token, and nothing per output token.
    for name in ("glmaas_time_to_first_token_seconds_count", "glmaas_time_per_output_token_seconds_count"):
        assert value(after, name, model="mock") == value(before, name, model="mock"), name


def test_each_refusal_is_counted_by_its_code(server: AppServer) -> None:
    before = scrape(server)
    limited = funded_key(server, "rpm-metrics", "0", rpm=1)
    assert chat(server, limited, "free").status_code == 200
    assert chat(server, limited, "free").json()["error"]["code"] == "rate_limit_exceeded"
    token_limited = funded_key(server, "tpm-metrics", "0", tpm=10)
    assert chat(server, token_limited, "free").status_code == 429
    broke = funded_key(server, "broke-metrics", "0")
    assert chat(server, broke).json()["error"]["code"] == "insufficient_quota"
    budgeted = funded_key(server, "budget-metrics", "10", budget="0.000001")
    assert chat(server, budgeted, max_tokens=100).json()["error"]["code"] == "budget_exceeded"
    one_at_a_time = funded_key(server, "conc-metrics", "10", concurrency=1)
    first = threading.Thread(target=chat, args=(server, one_at_a_time, "slow"), kwargs={"max_tokens": 20})
    first.start()
    _wait_until(lambda: value(scrape(server), "glmaas_engine_busy_slots", model="slow") == 1)
    assert chat(server, one_at_a_time, "slow").status_code == 429
    first.join()
    after = scrape(server)
    for code in ("rate_limited", "token_rate_limited", "insufficient_balance", "budget_exceeded",
                 "concurrency_limited"):
        assert value(after, "glmaas_refusals_total", code=code) - value(before, "glmaas_refusals_total",
                                                                         code=code) == 1, code
    refused = {"endpoint": "/v1/chat/completions", "dialect": "openai", "model": "free", "status": "429"}
    assert value(after, "glmaas_requests_total", **refused) - value(before, "glmaas_requests_total", **refused) == 2


def test_engine_slots_holds_and_requests_in_flight_are_read_at_scrape_time(server: AppServer) -> None:
    key = funded_key(server, "gauges-acct", "10")
    stream = threading.Thread(target=chat, args=(server, key, "slow"), kwargs={"stream": True, "max_tokens": 30})
    stream.start()
    _wait_until(lambda: value(scrape(server), "glmaas_engine_busy_slots", model="slow") == 1)
    during = scrape(server)
    assert value(during, "glmaas_open_holds", model="slow") == 1
    assert value(during, "glmaas_in_flight_requests") == 1
    stream.join()
    after = scrape(server)
    assert value(after, "glmaas_engine_busy_slots", model="slow") == 0
    assert value(after, "glmaas_open_holds", model="slow") == 0
    assert value(after, "glmaas_in_flight_requests") == 0
    assert value(after, "glmaas_draining") == 0


def test_an_upstream_that_refuses_connections_shows_unhealthy(server: AppServer) -> None:
    key = funded_key(server, "upstream-metrics", "0")
    member = {"model": "remote", "upstream": next(
        dict(labels)["upstream"] for name, labels in scrape(server) if name == "glmaas_upstream_healthy")}
    assert value(scrape(server), "glmaas_upstream_healthy", **member) == 1
    assert chat(server, key, "remote").status_code >= 500
    assert value(scrape(server), "glmaas_upstream_healthy", **member) == 0


def test_each_app_has_its_own_registry(server: AppServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = AppServer(tmp_path, "--no-default-model", "--model", "mock=mock")
    try:
        samples = scrape(other)
        assert not any(name == "glmaas_requests_total" and value > 0 for (name, _), value in samples.items())
        assert value(samples, "glmaas_engine_busy_slots", model="mock") == 0
    finally:
        other.stop()


def _wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def test_endpoints_are_route_templates_so_paths_cannot_make_new_series(server: AppServer) -> None:
    with admin(server) as client:
        for path in ("/admin/accounts/no-such-1", "/admin/accounts/no-such-2", "/v1/files/file-a",
                     "/v1/files/file-b", "/console/login", "/console/static/console.css", "/no/such/route"):
            client.get(path)
    endpoints = {dict(labels)["endpoint"] for name, labels in scrape(server) if name == "glmaas_requests_total"}
    assert {"/admin/accounts/{name}", "/v1/files/{file_id}", "/console/login", "/console/static",
            "unmatched"} <= endpoints
    assert not any("no-such" in e or "file-a" in e or "console.css" in e or "/no/such" in e for e in endpoints)
