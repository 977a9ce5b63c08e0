"""The console in a real browser (Debian's Chromium through Playwright) against a real server:
an operator's day (an account, money, a key, a request made with it, the usage on the page, the
key revoked), a tenant's view, and names chosen to attack the page shown as plain text."""

from __future__ import annotations

import time
from decimal import Decimal

import openai
import pytest
from playwright.sync_api import expect

from glmaas.benchmarks.browser import follow
from glmaas.benchmarks.harness import GlmaasProcess
from tests.api.console.conftest import ADMIN_TOKEN, funded_account

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '"><img src=x onerror="window.__pwned=1;alert(1)">',
    "' onmouseover='alert(1)' x='",
    "\u202eevil\u202c gpj.exe",
    "W" * 128,
]


def _sign_in(page, server: GlmaasProcess, credential: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{server.base_url}/console/login")
    page.fill("#credential", credential)
    follow(page, "form[action='/console/login'] button")


def _chat(key: str, server: GlmaasProcess) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)
    return client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=8)


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)  # generous: the machine may be busy
    yield page
    context.close()


def test_an_operator_funds_an_account_and_sees_its_usage(server: GlmaasProcess, page) -> None:  # type: ignore[no-untyped-def]
    _sign_in(page, server, ADMIN_TOKEN)
    assert page.url.endswith("/console/accounts")

    follow(page, "a[href='/console/prices']")
    page.fill("#price-model", "mock")
    page.fill("#price-input", "1000")
    page.fill("#price-output", "2000")
    follow(page, "#price-form button")
    assert page.locator("table").inner_text().count("1000.000000") == 2

    follow(page, "a[href='/console/accounts']")
    page.fill("#account-name", "browser-co")
    follow(page, "text=Create account")
    page.fill("#topup-amount", "5")
    page.fill("#topup-note", "invoice 1")
    follow(page, "#topup-form button")
    assert page.inner_text("#balance") == "5.00"
    assert "invoice 1" in page.inner_text("table.ledger")

    page.click("text=New key for this account")
    page.fill("#key-name", "ci")
    page.fill("#key-models", "mock")
    follow(page, "#key-form button")
    key = page.input_value("#new-key")
    assert key.count(".") == 1 and len(key) == 65
    page.click("button[data-copy]")
    # The clipboard answers asynchronously: wait for the label to change.
    expect(page.locator("button[data-copy]")).to_have_text("Copied")

    reply = _chat(key, server)
    assert reply.usage.total_tokens > 0
    page.goto(f"{server.base_url}/console/accounts/browser-co")
    # The page shows the key's usage and the balance less what the request cost.
    row = page.locator(f"tr[data-key-id='{key.split('.')[0]}']").inner_text()
    assert "\t1\t" in row and f"{reply.usage.total_tokens}" in row
    cost = 1000 * reply.usage.prompt_tokens + 2000 * reply.usage.completion_tokens  # micro-units
    assert Decimal(page.inner_text("#balance")) == Decimal(5_000_000 - cost) / 1_000_000
    assert "settlement" in page.inner_text("table.ledger")
    assert page.locator("figure.chart svg rect").count() >= 1
    # Not on the page again: the key was shown once.
    assert key.split(".")[1] not in page.content()

    page.on("dialog", lambda dialog: dialog.accept())
    page.locator(f"tr[data-key-id='{key.split('.')[0]}'] button", has_text="Revoke").click()
    page.wait_for_url("**/console/accounts/browser-co?done=*")
    assert "revoked" in page.locator(f"tr[data-key-id='{key.split('.')[0]}']").inner_text()
    deadline = time.monotonic() + 5  # a revocation reaches the key cache within a second
    while True:
        try:
            _chat(key, server)
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.2)

    page.goto(f"{server.base_url}/console/usage?account=browser-co")
    assert "browser-co" in page.inner_text("#usage-table")
    page.goto(f"{server.base_url}/console/models")
    assert "mock-large" in page.inner_text("main")


def test_a_tenant_sees_its_account_and_manages_its_keys(server: GlmaasProcess, page) -> None:  # type: ignore[no-untyped-def]
    key = funded_account(server, "tenant-co", "3")
    funded_account(server, "neighbour-co", "7")
    _chat(key, server)
    _sign_in(page, server, key)
    assert page.url.endswith("/console/account")
    main = page.inner_text("main")
    assert "tenant-co" in main and "neighbour-co" not in main
    assert page.locator("nav a").all_inner_texts() == ["My account"]
    assert page.locator("figure.chart svg rect").count() >= 1

    page.click("text=New key")
    page.fill("#key-name", "second")
    follow(page, "#key-form button")
    second = page.input_value("#new-key")
    assert _chat(second, server).choices
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator(f"tr[data-key-id='{second.split('.')[0]}'] button", has_text="Revoke").click()
    page.wait_for_url("**/console/account?done=*")

    for path in ["/accounts", "/accounts/neighbour-co", "/keys", "/prices", "/usage", "/models"]:
        response = page.goto(f"{server.base_url}/console{path}")
        assert response is not None and response.status == 403, path
        assert "neighbour-co" not in page.content()


def test_hostile_names_are_shown_as_text(server: GlmaasProcess, page) -> None:  # type: ignore[no-untyped-def]
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    _sign_in(page, server, ADMIN_TOKEN)
    page.fill("#account-name", "hostile-co")
    follow(page, "text=Create account")
    for name in HOSTILE:
        page.click("text=New key for this account")
        page.fill("#key-name", name)
        page.fill("#key-models", name.replace(" ", ""))
        follow(page, "#key-form button")
        page.fill("#topup-amount", "1")
        page.fill("#topup-note", name)
        follow(page, "#topup-form button")
    page.goto(f"{server.base_url}/console/prices")
    page.fill("#price-model", HOSTILE[0])
    page.fill("#price-input", "1")
    page.fill("#price-output", "1")
    follow(page, "#price-form button")

    for path in ["/accounts/hostile-co", "/keys", "/prices"]:
        page.goto(f"{server.base_url}/console{path}")
        page.hover("main")
        assert page.evaluate("window.__pwned") is None, path
        assert page.locator("main img").count() == 0, path
        text = page.inner_text("main")
        assert HOSTILE[0] in text, path
    assert dialogs == []
    page.goto(f"{server.base_url}/console/accounts/hostile-co")
    text = page.inner_text("main")
    assert all(name.strip() in text for name in HOSTILE)
    # The right-to-left override stays inside its name; a long name is cut to its column.
    assert page.locator("bdi", has_text="evil").count() >= 2
    widest = max(box["width"] for box in (el.bounding_box() for el in page.locator("table.keys bdi.name").all())
                 if box)
    assert widest < 300
