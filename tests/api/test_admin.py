"""The admin API and tenant isolation, on the app in process."""

from __future__ import annotations

import pytest

from tests.api.billing_helpers import admin, balance_micro, funded_key, price_all
from tests.inprocess import AppServer

BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = AppServer(tmp_path_factory.mktemp("admin"), "--no-default-model", "--model", "mock=mock",
                    "--model", "other=mock")
    price_all(srv, "mock")
    yield srv
    srv.stop()


@pytest.mark.parametrize("auth", [None, "Bearer nope", "tenant"])
def test_admin_refuses_anyone_but_the_admin(server: AppServer, auth: str | None) -> None:
    if auth == "tenant":
        auth = "Bearer " + funded_key(server, "tenant-probe", "0")
    headers = {"Authorization": auth} if auth else {}
    for method, path, body in [("GET", "/admin/accounts/tenant-probe", None), ("GET", "/admin/usage", None),
                               ("POST", "/admin/accounts/tenant-probe/topup", {"amount": "100"}),
                               ("POST", "/admin/keys", {"account": "tenant-probe"}),
                               ("PUT", "/admin/prices/mock", {"input": "0", "output": "0"})]:
        with server.client() as http:
            r = http.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_admin_token"


def test_admin_manages_accounts_keys_prices(server: AppServer) -> None:
    with admin(server) as client:
        assert client.post("/admin/accounts", json={"name": "acme"}).status_code == 201
        assert client.post("/admin/accounts", json={"name": "acme"}).status_code == 409
        assert client.post("/admin/accounts/acme/topup", json={"amount": "2.5"}).json()["balance"] == "2.500000"
        assert client.post("/admin/accounts/acme/topup", json={"amount": "-1"}).status_code == 400
        assert client.post("/admin/accounts/nobody/topup", json={"amount": "1"}).status_code == 404
        r = client.post("/admin/keys", json={"account": "acme", "name": "ci", "rpm": 100, "models": ["mock"]})
        key = r.json()["key"]
        assert client.get("/admin/prices").json()["mock"]["output"] == "10.000000"
    with server.client() as http:
        r = http.post(f"{server.openai_url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    with admin(server) as client:
        usage = client.get("/admin/usage", params={"by": "account,key,model", "account": "acme"}).json()["data"]
        assert usage[0]["requests"] == 1 and usage[0]["model"] == "mock"
        revoked = client.delete(f"/admin/keys/{key.split('.')[0]}").json()
        assert revoked["revoked"] is True


def test_tenants_cannot_touch_each_others_money(server: AppServer) -> None:
    a = funded_key(server, "tenant-a", "1")
    b = funded_key(server, "tenant-b", "1", models=["other"])
    before_b = balance_micro(server, "tenant-b")
    with server.client() as http:
        for _ in range(3):
            assert http.post(f"{server.zhipu_url}/chat/completions", json=BODY,
                             headers={"Authorization": f"Bearer {a}"}).status_code == 200
        assert balance_micro(server, "tenant-b") == before_b
        assert balance_micro(server, "tenant-a") < 1_000_000
        # B's key sees only its own models and cannot call others.
        ids = [m["id"] for m in http.get(f"{server.openai_url}/models",
                                         headers={"Authorization": f"Bearer {b}"}).json()["data"]]
        assert ids == ["other"]
        r = http.post(f"{server.zhipu_url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {b}"})
        assert r.status_code == 403
        # Nobody can pass off another account's key id with their own secret.
        forged = b.split(".")[0] + "." + a.split(".")[1]
        assert http.post(f"{server.zhipu_url}/chat/completions", json=BODY,
                         headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_limits_out_of_range_are_400_not_500(server: AppServer) -> None:
    with admin(server) as client:
        client.post("/admin/accounts", json={"name": "big-limits"})
        r = client.post("/admin/keys", json={"account": "big-limits", "tpm": 10_000_000_000})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tpm"
        r = client.put("/admin/accounts/big-limits/limits/mock", json={"rpm": -1})
        assert r.status_code == 400
        r = client.post("/admin/keys", json={"account": "big-limits", "budget": "-5"})
        assert r.status_code == 400


def test_openapi_lists_admin_routes_to_the_admin_only(server: AppServer) -> None:
    with server.client() as http:
        anonymous = http.get("/openapi.json")
    assert anonymous.status_code == 200
    paths = anonymous.json()["paths"]
    assert "/v1/models" in paths
    assert not [p for p in paths if p.startswith("/admin")]
    with admin(server) as client:
        assert "/admin/accounts" in client.get("/openapi.json").json()["paths"]
