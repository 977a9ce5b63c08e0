"""Pages: the Jinja environment (autoescaped, strict about missing values), the filters the
templates use, and how a page or a redirect after a form is answered."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from glmaas.api.console.guard import session_of
from glmaas.api.console.session import write_session
from glmaas.api.requests import app_state
from glmaas.platform.pricing import format_amount

CONSOLE_PREFIX = "/console"
HERE = Path(__file__).parent


def _money(micro: int | None) -> str:
    """Micro-units as an amount of currency, trailing zeros dropped (2 decimals at least)."""
    if micro is None:
        return "—"
    whole, _, frac = format_amount(micro).partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
templates.filters.update(money=_money, when=_when, path=lambda s: quote(str(s), safe=""))


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page, with what every page needs: the session (role, CSRF token) and the flash message."""
    session = session_of(request)
    context.setdefault("error", "")
    body = templates.get_template(template).render(
        prefix=CONSOLE_PREFIX, role=session.role.value, csrf=session.csrf, path=request.url.path,
        done=request.query_params.get("done", ""), now=time.time(), **context)
    response = HTMLResponse(body, status_code=status)
    if getattr(request.state, "fresh_session", False):
        write_session(response, request, app_state(request).box, session)
    return response


def see_other(path: str, done: str = "") -> RedirectResponse:
    """After a form's action succeeded: back to a page (POST, redirect, GET)."""
    query = f"?done={quote(done)}" if done else ""
    return RedirectResponse(f"{CONSOLE_PREFIX}{path}{query}", status_code=303)
