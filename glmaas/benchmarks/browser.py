"""A browser for the console's tests and screenshots: Debian's Chromium (`apt-get install
chromium`; `make test` installs it when missing) driven by Playwright for Python. Playwright's
own browser download is never used, and the browser reaches nothing but the server under test.

Playwright is imported when a browser starts, so the rest of this package needs it not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class NoBrowser(RuntimeError):
    """Chromium is not installed where the browser tests look for it."""


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed when the block ends."""
    if not CHROMIUM.exists():
        raise NoBrowser(f"no browser at {CHROMIUM}: install it with `apt-get install -y chromium` "
                        "(`make test` does so when it is missing)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def follow(page, selector: str) -> None:  # type: ignore[no-untyped-def]
    """Click the link or form button `selector` and return once the page it leads to has loaded
    (a bare click returns as soon as the navigation starts: the old page may still be read)."""
    with page.expect_navigation():
        page.click(selector)
