"""Rate limits through the API: refused at once, never overshot under concurrency; on the app in
process, many client threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.billing_helpers import admin, funded_key
from tests.inprocess import AppServer

BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = AppServer(tmp_path_factory.mktemp("limits"), "--no-default-model", "--model", "mock=mock",
                    "--model", "slow=mock:delay=0.05")
    yield srv
    srv.stop()


def hammer(urls: list[str], key: str, clients: int = 50, body: dict = BODY,
           connect: Callable[..., httpx.Client] = httpx.Client) -> list[httpx.Response]:
    """`clients` threads released at once, one request each, spread over `urls`; each thread's
    HTTP client is `connect(timeout=...)` (an in-process server's `client`, or a plain one)."""
    barrier = threading.Barrier(clients)

    def one(i: int) -> httpx.Response:
        with connect(timeout=30) as client:
            barrier.wait()
            return client.post(f"{urls[i % len(urls)]}/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}"})

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


def test_rpm_is_never_overshot_by_50_concurrent_clients(server: AppServer) -> None:
    key = funded_key(server, "rpm-acct", "0", rpm=10)
    responses = hammer([server.zhipu_url, server.openai_url], key, connect=server.client)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) == 10 and len(refused) == 40
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-requests"] == "10"
        code = r.json()["error"]["code"]
        assert code in ("1303", "rate_limit_exceeded")
    assert ok[0].headers["x-ratelimit-limit-requests"] == "10"
    assert {r.headers["x-ratelimit-remaining-requests"] for r in ok} == {str(n) for n in range(10)}


def test_concurrency_limit_counts_streams_in_flight(server: AppServer) -> None:
    key = funded_key(server, "conc-acct", "0", concurrency=3)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    responses = hammer([server.zhipu_url], key, clients=12, body=body, connect=server.client)
    assert sum(r.status_code == 200 for r in responses) == 3
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == 9 and all(r.json()["error"]["code"] == "1302" for r in refused)
    # Once they finish, the slots are free again.
    assert hammer([server.zhipu_url], key, clients=3, body=body, connect=server.client)[0].status_code == 200


def test_tpm_counts_worst_case_then_gives_back_unused(server: AppServer) -> None:
    key = funded_key(server, "tpm-acct", "0", tpm=200)
    with server.client(headers={"Authorization": f"Bearer {key}"}) as http:
        r = http.post(f"{server.openai_url}/chat/completions", json={**BODY, "max_tokens": 500})
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
        used = 0
        for _ in range(10):
            r = http.post(f"{server.openai_url}/chat/completions", json={**BODY, "max_tokens": 20})
            if r.status_code != 200:
                break
            used += r.json()["usage"]["total_tokens"]
    assert 0 < used <= 200


def test_account_model_limit_applies_across_its_keys(server: AppServer) -> None:
    k1 = funded_key(server, "am-acct", "0")
    with admin(server) as client:
        k2 = client.post("/admin/keys", json={"account": "am-acct"}).json()["key"]
        r = client.put("/admin/accounts/am-acct/limits/mock", json={"rpm": 4})
        assert r.status_code == 200
    import time

    time.sleep(1.1)  # account limits are cached for up to a second
    with server.client() as http:
        codes = [http.post(f"{server.zhipu_url}/chat/completions", json=BODY,
                           headers={"Authorization": f"Bearer {k}"}).status_code for k in (k1, k2, k1, k2, k1, k2)]
    assert codes == [200, 200, 200, 200, 429, 429]
