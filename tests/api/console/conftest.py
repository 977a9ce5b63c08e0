"""The console's tests share one `glmaas serve` process (mock engines, a known admin token) and
these ways in: a signed-in httpx client, and a page of Debian's Chromium (see
`glmaas.benchmarks.browser`)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from glmaas.benchmarks.browser import chromium
from glmaas.benchmarks.harness import GlmaasProcess, start_glmaas

ADMIN_TOKEN = "glmaas-admin-console-tests"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlmaasProcess]:
    srv = start_glmaas(tmp_path_factory.mktemp("console"), "--no-default-model", "--model", "mock=mock",
                       "--model", "mock-large=mock", env={"GLMAAS_ADMIN_TOKEN": ADMIN_TOKEN})
    yield srv
    srv.stop()


@pytest.fixture(scope="package")
def browser() -> Iterator:  # type: ignore[type-arg]
    with chromium() as b:
        yield b


def admin_api(server: GlmaasProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


def funded_account(server: GlmaasProcess, name: str, amount: str = "10") -> str:
    """An account with `amount` on it and one key, made through the admin API; the key."""
    with admin_api(server) as api:
        assert api.post("/admin/accounts", json={"name": name}).status_code == 201
        assert api.post(f"/admin/accounts/{name}/topup", json={"amount": amount}).status_code == 200
        return api.post("/admin/keys", json={"account": name, "name": f"{name}-key"}).json()["key"]


def csrf_of(page_html: str) -> str:
    match = CSRF.search(page_html)
    assert match, "the page has no form with a CSRF token"
    return match[1]


def signed_in(server: GlmaasProcess, credential: str) -> tuple[httpx.Client, str]:
    """An httpx client signed in to the console with `credential`, and its session's CSRF token."""
    client = httpx.Client(base_url=f"{server.base_url}/console", timeout=10)
    token = csrf_of(client.get("/login").text)
    r = client.post("/login", data={"csrf": token, "credential": credential})
    assert r.status_code == 303, r.text
    home = client.get(r.headers["location"].removeprefix("/console"))
    assert home.status_code == 200, home.text
    return client, csrf_of(home.text)
