"""Screenshots of the console's main pages, for the README and docs/operations.md.

    .venv/bin/python docs/console/screenshots.py [--screenshots DIR]   # default: docs/console

Starts `glmaas serve` on a scratch data dir with mock engines (no model is loaded), fills it
through the console itself and the admin API (accounts, top-ups, keys, prices, a few chat
requests made with the keys), then saves a PNG of each page, taken by Debian's Chromium the way
the console's browser tests drive it (`glmaas.benchmarks.browser`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from glmaas.benchmarks.browser import chromium, follow  # noqa: E402
from glmaas.benchmarks.harness import GlmaasProcess, start_glmaas  # noqa: E402

ADMIN_TOKEN = "glmaas-admin-screenshots"
MODELS = ["glm-4-flash", "glm-4-plus", "glm-4-air"]
PRICES = {"glm-4-flash": ("0.10", "0.10"), "glm-4-plus": ("5.00", "5.00"), "glm-4-air": ("0.50", "0.50")}
ACCOUNTS = {"acme-labs": "200", "globex-research": "120", "northwind": "50"}
# (account, model, requests, max_tokens): the traffic the usage pages show.
TRAFFIC = [("acme-labs", "glm-4-plus", 6, 48), ("acme-labs", "glm-4-flash", 12, 64),
           ("globex-research", "glm-4-air", 8, 40), ("globex-research", "glm-4-plus", 3, 32),
           ("northwind", "glm-4-flash", 5, 24)]


def populate(server: GlmaasProcess) -> dict[str, str]:
    """Accounts, money, prices and a key per account through the admin API, then some traffic;
    the keys, by account."""
    keys = {}
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        for model, (given, output) in PRICES.items():
            api.put(f"/admin/prices/{model}", json={"input": given, "output": output}).raise_for_status()
        for account, amount in ACCOUNTS.items():
            api.post("/admin/accounts", json={"name": account}).raise_for_status()
            api.post(f"/admin/accounts/{account}/topup", json={"amount": amount, "note": "opening balance"}
                     ).raise_for_status()
            keys[account] = api.post("/admin/keys", json={"account": account, "name": "production",
                                                          "rpm": 600}).json()["key"]
        api.post("/admin/accounts/globex-research/adjust",
                 json={"amount": "-4.5", "note": "duplicate top-up reversed"}).raise_for_status()
        api.put("/admin/accounts/acme-labs/limits/glm-4-plus", json={"rpm": 120, "tpm": 200000}).raise_for_status()
    with httpx.Client(base_url=server.openai_url, timeout=30) as client:
        for account, model, requests, max_tokens in TRAFFIC:
            for i in range(requests):
                client.post("/chat/completions", headers={"Authorization": f"Bearer {keys[account]}"},
                            json={"model": model, "max_tokens": max_tokens,
                                  "messages": [{"role": "user", "content": f"Summarise report {i} " * (i + 1)}]}
                            ).raise_for_status()
    return keys


def take(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="glmaas-console-shots-"))
    args = [arg for model in MODELS for arg in ("--model", f"{model}=mock:repeat=8")]
    server = start_glmaas(data_dir, "--no-default-model", *args, env={"GLMAAS_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        keys = populate(server)
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            console = f"{server.base_url}/console"

            def shot(name: str) -> None:
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                print(out / f"{name}.png")

            page.goto(f"{console}/login")
            shot("login")
            page.fill("#credential", ADMIN_TOKEN)
            follow(page, "form[action='/console/login'] button")
            shot("accounts")
            page.goto(f"{console}/accounts/acme-labs")
            page.fill("#topup-amount", "25")
            page.fill("#topup-note", "invoice 2026-0042")
            follow(page, "#topup-form button")
            shot("account")
            page.goto(f"{console}/keys")
            page.select_option("#key-account", "northwind")
            page.fill("#key-name", "analytics")
            page.fill("#key-models", "glm-4-flash")
            page.fill("#key-rpm", "60")
            page.fill("#key-budget", "10")
            follow(page, "#key-form button")
            shot("keys")
            page.goto(f"{console}/usage?series=model&metric=tokens")
            shot("usage")
            page.goto(f"{console}/models")
            shot("models")
            tenant = browser.new_page(viewport={"width": 1280, "height": 800})
            tenant.goto(f"{console}/login")
            tenant.fill("#credential", keys["acme-labs"])
            follow(tenant, "form[action='/console/login'] button")
            tenant.screenshot(path=str(out / "tenant.png"), full_page=True)
            print(out / "tenant.png")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=Path, default=ROOT / "docs" / "console", metavar="DIR",
                        help="where to save the PNGs (default: docs/console)")
    take(parser.parse_args().screenshots)


if __name__ == "__main__":
    main()
