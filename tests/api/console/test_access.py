"""Who reaches what in the console, over plain HTTP: a tenant reaches no operator page and no
other account, every POST needs the session's CSRF token, the session cookie is sealed and
flagged, and every response carries the security headers."""

from __future__ import annotations

import base64
import re
import time
from contextlib import closing
from pathlib import Path

import httpx
import openai
import pytest
from starlette.routing import Route

from glmaas.api.console import operator
from glmaas.api.console.app import CONTENT_SECURITY_POLICY
from glmaas.benchmarks.harness import GlmaasProcess, start_glmaas
from tests.api.console.conftest import ADMIN_TOKEN, csrf_of, funded_account, signed_in


def _operator_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the operator's pages, path parameters filled in."""
    routes = []
    for route in operator.router.routes:
        assert isinstance(route, Route)
        path = route.path.replace("{name}", "other-co").replace("{key_id}", "0" * 32)
        routes += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return routes


@pytest.fixture(scope="module")
def tenants(server: GlmaasProcess) -> dict[str, str]:
    return {"own": funded_account(server, "own-co"), "other": funded_account(server, "other-co")}


def test_a_tenant_reaches_no_operator_page(server: GlmaasProcess, tenants: dict[str, str]) -> None:
    client, csrf = signed_in(server, tenants["own"])
    routes = _operator_routes()
    assert len(routes) >= 12, routes
    with closing(client):
        for method, path in routes:
            r = client.request(method, path, data={"csrf": csrf, "name": "x", "amount": "100", "account": "other-co",
                                                   "model": "mock", "input": "0", "output": "0"})
            assert r.status_code == 403, (method, path, r.status_code)
            assert "other-co" not in r.text, path
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        assert api.get("/admin/accounts/other-co").json()["balance"] == "10.000000"
        assert len(api.get("/admin/accounts/other-co").json()["keys"]) == 1


def test_a_tenant_sees_its_own_account_only(server: GlmaasProcess, tenants: dict[str, str]) -> None:
    client, csrf = signed_in(server, tenants["own"])
    other_key_id = tenants["other"].split(".")[0]
    with closing(client):
        page = client.get("/account").text
        assert "own-co" in page and "other-co" not in page and other_key_id not in page
        # Another account's key cannot be revoked from here: it is as absent as a made-up one.
        assert client.post(f"/account/keys/{other_key_id}/revoke", data={"csrf": csrf}).status_code == 404
    other = openai.OpenAI(api_key=tenants["other"], base_url=f"{server.base_url}/v1")
    assert other.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=3).choices


def test_signed_out_visitors_are_sent_to_sign_in(server: GlmaasProcess) -> None:
    with httpx.Client(base_url=f"{server.base_url}/console") as client:
        for method, path in _operator_routes() + [("GET", "/account"), ("POST", "/account/keys")]:
            r = client.request(method, path)
            expected = 303 if method == "GET" else 403
            assert r.status_code == expected, (method, path, r.status_code)
            if method == "GET":
                assert r.headers["location"] == "/console/login"


@pytest.mark.parametrize("token", [None, "", "wrong", "other-session"])
def test_a_post_without_the_sessions_csrf_token_is_refused(server: GlmaasProcess, token: str | None) -> None:
    client, csrf = signed_in(server, ADMIN_TOKEN)
    if token == "other-session":
        token = signed_in(server, ADMIN_TOKEN)[1]
    data = {"name": f"csrf-{len(token or '')}-{token is None}"}
    if token is not None:
        data["csrf"] = token
    with closing(client):
        r = client.post("/accounts", data=data)
        assert r.status_code == 403 and "did not come from this console" in r.text
        assert client.get(f"/accounts/{data['name']}").status_code == 404
        assert client.post("/accounts", data={**data, "csrf": csrf}).status_code == 303


def test_signing_in_needs_the_csrf_token_too(server: GlmaasProcess) -> None:
    with httpx.Client(base_url=f"{server.base_url}/console") as client:
        client.get("/login")
        assert client.post("/login", data={"credential": ADMIN_TOKEN}).status_code == 403
        assert client.get("/accounts").status_code == 303


def test_wrong_credentials_are_refused(server: GlmaasProcess, tenants: dict[str, str]) -> None:
    with httpx.Client(base_url=f"{server.base_url}/console") as client:
        csrf = csrf_of(client.get("/login").text)
        for credential in ["", "glmaas-admin-nope", tenants["own"] + "x", "<script>", "a" * 5000]:
            r = client.post("/login", data={"csrf": csrf, "credential": credential})
            assert r.status_code == 401, credential
        assert client.get("/accounts").status_code == 303


def test_the_session_cookie_is_sealed_and_flagged(server: GlmaasProcess, tenants: dict[str, str]) -> None:
    for credential in (ADMIN_TOKEN, tenants["own"]):
        with httpx.Client(base_url=f"{server.base_url}/console") as client:
            csrf = csrf_of(client.get("/login").text)
            r = client.post("/login", data={"csrf": csrf, "credential": credential})
            cookie = r.headers["set-cookie"]
            assert re.search(r"(?i); httponly", cookie) and re.search(r"(?i); samesite=strict", cookie)
            assert "; path=/console" in cookie.lower() and "secure" not in cookie.lower()
            value = cookie.split(";")[0].split("=", 1)[1]
            sealed = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            for secret in (credential, credential.split(".")[-1]):
                assert secret not in value and secret.encode() not in sealed
        # Behind a proxy that terminates TLS (uvicorn trusts X-Forwarded-Proto from localhost): Secure.
        with httpx.Client(base_url=f"{server.base_url}/console", headers={"X-Forwarded-Proto": "https"}) as client:
            assert "; secure" in client.get("/login").headers["set-cookie"].lower()


def test_a_forged_or_altered_cookie_signs_nobody_in(server: GlmaasProcess) -> None:
    client, _ = signed_in(server, ADMIN_TOKEN)
    with closing(client):
        value = client.cookies["glmaas_console"]
    flipped = value[:20] + ("A" if value[20] != "A" else "B") + value[21:]
    for cookie in (value, flipped, "x", base64.urlsafe_b64encode(b'{"role": "operator"}').decode()):
        with httpx.Client(base_url=f"{server.base_url}/console", headers={"Cookie": f"glmaas_console={cookie}"}) as c:
            assert c.get("/accounts").status_code == (200 if cookie == value else 303)


def test_security_headers_on_every_response(server: GlmaasProcess) -> None:
    client, _ = signed_in(server, ADMIN_TOKEN)
    with closing(client):
        for path in ["/login", "/accounts", "/no-such-page", "/static/console.js", "/static/console.css"]:
            r = client.get(path)
            assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
            assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
            assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
            assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert client.get("/accounts").headers["cache-control"] == "no-store"
        assert client.get("/static/console.js").headers["content-type"].startswith("text/javascript")
        page = client.get("/accounts").text
        assert "<script>" not in page and not re.search(r"<script(?![^>]*\bsrc=)", page)
        assert not re.search(r"\son[a-z]+=", page) and "style=" not in page


def test_signing_out_ends_the_session(server: GlmaasProcess) -> None:
    client, csrf = signed_in(server, ADMIN_TOKEN)
    with closing(client):
        r = client.post("/logout", data={"csrf": csrf})
        assert r.status_code == 303 and "max-age=0" in r.headers["set-cookie"].lower()
        assert client.get("/accounts").status_code == 303


def test_revoking_a_tenants_key_ends_its_session(server: GlmaasProcess) -> None:
    key = funded_account(server, "revoked-co")
    client, _ = signed_in(server, key)
    with closing(client), httpx.Client(base_url=server.base_url,
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        assert client.get("/account").status_code == 200
        assert api.delete(f"/admin/keys/{key.split('.')[0]}").status_code == 200
        time.sleep(1.1)  # the key cache's lifetime
        r = client.get("/account")
        assert r.status_code == 303 and r.headers["location"] == "/console/login"


def test_a_refused_form_says_why_on_the_page(server: GlmaasProcess) -> None:
    client, csrf = signed_in(server, ADMIN_TOKEN)
    with closing(client):
        assert client.post("/accounts", data={"csrf": csrf, "name": "forms-co"}).status_code == 303
        cases = [("/accounts", {"name": "forms-co"}, 409, "already exists"),
                 ("/accounts", {"name": "no spaces"}, 400, "an account name is"),
                 ("/accounts/forms-co/topup", {"amount": "1.1234567"}, 400, "at most 6 decimals"),
                 ("/accounts/forms-co/topup", {"amount": "-1"}, 400, "must be positive"),
                 ("/accounts/forms-co/adjust", {"amount": "1"}, 400, "Note is required"),
                 ("/accounts/nobody/topup", {"amount": "1"}, 404, "no account named"),
                 ("/accounts/forms-co/keys", {"rpm": "-1"}, 400, "rpm must be a whole number"),
                 ("/accounts/forms-co/keys", {"expires": "tomorrow"}, 400, "Expiry is a date"),
                 ("/prices", {"model": "m", "input": "x", "output": "1"}, 400, "not an amount")]
        for path, data, status, message in cases:
            r = client.post(path, data={**data, "csrf": csrf})
            assert (r.status_code, message in r.text) == (status, True), (path, data, r.status_code)
        assert "0.00" in client.get("/accounts/forms-co").text
        assert client.get("/accounts/nobody").status_code == 404


def test_sessions_outlive_a_restart_but_not_a_new_admin_token(tmp_path: Path) -> None:
    """Sessions are kept by the browser, sealed under the master key: a restarted replica (or
    another one) honours them; a new admin token ends every operator's."""
    args = ("--no-default-model", "--model", "mock=mock")
    with start_glmaas(tmp_path, *args, env={"GLMAAS_ADMIN_TOKEN": ADMIN_TOKEN}) as first:
        tenant_key = funded_account(first, "restart-co")
        operator, _ = signed_in(first, ADMIN_TOKEN)
        tenant, _ = signed_in(first, tenant_key)
        cookies = {"operator": operator.cookies["glmaas_console"], "tenant": tenant.cookies["glmaas_console"]}
        operator.close()
        tenant.close()
    for token, expected in ((ADMIN_TOKEN, {"operator": 200, "tenant": 200}),
                            (ADMIN_TOKEN + "-rotated", {"operator": 303, "tenant": 200})):
        with start_glmaas(tmp_path, *args, env={"GLMAAS_ADMIN_TOKEN": token}) as server:
            for role, path in (("operator", "/accounts"), ("tenant", "/account")):
                with httpx.Client(base_url=f"{server.base_url}/console",
                                  headers={"Cookie": f"glmaas_console={cookies[role]}"}) as client:
                    assert client.get(path).status_code == expected[role], (token, role)
