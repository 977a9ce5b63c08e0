"""Prepaid balances through the API: exact charges, refusals, and what each way of ending costs.

The app runs in this process; a client that goes away mid-stream, and the OpenAI SDK, talk to a
`glmaas serve` process."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.api.billing_helpers import (
    assert_books_balance,
    balance_micro,
    expected_cost,
    funded_key,
    price_all,
    query,
)
from tests.conftest import Server, ServerUnderTest, start_server
from tests.inprocess import AppServer

MODELS = ("--no-default-model", "--model", "mock=mock", "--model", "slow=mock:delay=0.05,repeat=3",
          "--model", "faulty=mock:fail_after=5", "--model", "free=mock",
          "--request-timeout", "1.0")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = AppServer(tmp_path_factory.mktemp("billing"), *MODELS)
    price_all(srv, "mock", "slow", "faulty")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def process(tmp_path_factory: pytest.TempPathFactory):
    srv = start_server(tmp_path_factory.mktemp("billing-process"), *MODELS)
    price_all(srv, "mock", "slow", "faulty")
    yield srv
    srv.stop()


def _chat(server: ServerUnderTest, key: str, dialect: str = "zhipu",
          **body) -> httpx.Response:  # type: ignore[no-untyped-def]
    url = server.zhipu_url if dialect == "zhipu" else server.openai_url
    payload = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], **body}
    with server.client(timeout=15) as http:
        return http.post(f"{url}/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"})


def _stream_lines(server: ServerUnderTest, key: str, body: dict, stop_after: int | None = None) -> list[dict]:
    chunks = []
    with server.client(timeout=15) as http, http.stream(
            "POST", f"{server.zhipu_url}/chat/completions", json={**body, "stream": True},
            headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
                if stop_after is not None and len(chunks) >= stop_after:
                    break
    return chunks


def test_a_request_is_charged_its_exact_cost(server: AppServer) -> None:
    key = funded_key(server, "exact", "1")
    r = _chat(server, key, max_tokens=7, request_id="exact-1")
    usage = r.json()["usage"]
    cost = expected_cost(usage["prompt_tokens"], usage["completion_tokens"])
    assert balance_micro(server, "exact") == 1_000_000 - cost
    entries = {row["kind"]: row["amount"] for row in query(
        server, "SELECT kind, amount FROM ledger_entries WHERE request_id = 'exact-1'")}
    assert entries["settlement"] == -cost
    assert entries["hold"] == -entries["release"] == -expected_cost(usage["prompt_tokens"], 7)
    assert server.wait_usage("exact-1")["cost"] == cost
    assert_books_balance(server)


def test_free_model_needs_no_balance(server: AppServer) -> None:
    key = funded_key(server, "broke", "0")
    assert _chat(server, key, model="free").status_code == 200


@pytest.mark.parametrize("dialect", ["zhipu", "openai"])
def test_insufficient_balance_is_refused_and_costs_nothing(server: AppServer, dialect: str) -> None:
    key = funded_key(server, f"poor-{dialect}", "0.0001")
    r = _chat(server, key, dialect, max_tokens=100)
    assert r.status_code == 429
    assert r.headers["x-should-retry"] == "false"
    err = r.json()["error"]
    assert err["code"] == ("1113" if dialect == "zhipu" else "insufficient_quota")
    assert balance_micro(server, f"poor-{dialect}") == 100
    # A smaller request fits.
    assert _chat(server, key, dialect, max_tokens=1).status_code == 200


def test_openai_sdk_sees_insufficient_quota(process: Server) -> None:
    key = funded_key(process, "poor-sdk", "0.0001")
    client = openai.OpenAI(api_key=key, base_url=process.openai_url, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}], max_tokens=500)
    assert info.value.code == "insufficient_quota"


def test_key_budget(server: AppServer) -> None:
    key = funded_key(server, "budgeted", "1", budget="0.0005")  # 500 micro-units
    assert _chat(server, key, max_tokens=5).status_code == 200
    r = _chat(server, key, max_tokens=100)
    assert r.status_code == 429 and r.json()["error"]["code"] == "1113"


def test_client_disconnect_costs_the_tokens_produced(process: Server) -> None:
    key = funded_key(process, "leaver", "1")
    chunks = _stream_lines(process, key, {"model": "slow", "messages": [{"role": "user", "content": "hi"}],
                                          "request_id": "leave-1"}, stop_after=5)
    row = process.wait_usage("leave-1")
    assert row["status"] == "aborted"
    delivered = len(chunks) - 1  # the first chunk carries the role only
    assert delivered <= row["completion_tokens"] <= delivered + 2
    assert row["cost"] == expected_cost(row["prompt_tokens"], row["completion_tokens"])
    assert balance_micro(process, "leaver") == 1_000_000 - row["cost"]
    assert_books_balance(process)


def test_engine_fault_mid_stream_costs_the_tokens_produced(server: AppServer) -> None:
    key = funded_key(server, "faulted", "1")
    chunks = _stream_lines(server, key, {"model": "faulty", "messages": [{"role": "user", "content": "hi"}],
                                         "request_id": "fault-1"})
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "network_error"
    assert last["usage"]["completion_tokens"] == 5
    row = server.wait_usage("fault-1")
    assert (row["status"], row["completion_tokens"]) == ("error", 5)
    assert row["cost"] == expected_cost(row["prompt_tokens"], 5)
    assert balance_micro(server, "faulted") == 1_000_000 - row["cost"]


def test_engine_fault_without_stream_is_500_and_free(server: AppServer) -> None:
    key = funded_key(server, "faulted-plain", "1")
    r = _chat(server, key, model="faulty", request_id="fault-plain-1")
    assert r.status_code == 500 and r.json()["error"]["code"] == "1234"
    row = server.wait_usage("fault-plain-1")
    assert (row["status"], row["cost"]) == ("error", 0)
    assert balance_micro(server, "faulted-plain") == 1_000_000


def test_timeout_mid_stream_costs_the_tokens_produced(server: AppServer) -> None:
    key = funded_key(server, "slowpoke", "1")
    chunks = _stream_lines(server, key, {"model": "slow", "messages": [{"role": "user", "content": "hi"}],
                                         "request_id": "timeout-1"})
    assert chunks[-1]["choices"][0]["finish_reason"] == "network_error"
    row = server.wait_usage("timeout-1")
    assert row["status"] == "timeout"
    # 1 s at one token per 50 ms: about 20 tokens (fewer on a busy machine), never the reply's 132.
    assert 1 <= row["completion_tokens"] <= 30
    assert row["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"]
    assert row["cost"] == expected_cost(row["prompt_tokens"], row["completion_tokens"])


def test_duplicate_request_id_is_refused_within_an_account_only(server: AppServer) -> None:
    a = funded_key(server, "dup-a", "1")
    b = funded_key(server, "dup-b", "1")
    assert _chat(server, a, request_id="same-id").status_code == 200
    r = _chat(server, a, request_id="same-id")
    assert r.status_code == 400 and r.json()["error"]["code"] == "1231"
    assert _chat(server, b, request_id="same-id").status_code == 200
