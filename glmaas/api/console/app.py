"""The web console at `/console`: a small application of its own, mounted into the API's, with
server-rendered pages (Jinja, autoescaped), its own static files and no inline script, so a strict
Content-Security-Policy holds. Refusals are HTML pages here, not the API's JSON errors."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.console.guard import Denied, SignInRequired, check_csrf, session_of
from glmaas.api.console.session import Role, write_session
from glmaas.api.requests import app_state
from glmaas.api.state import AppState
from glmaas.platform.pricing import format_amount

CONSOLE_PREFIX = "/console"
HERE = Path(__file__).parent
# Scripts and styles from our own static files only; nothing may frame the console.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the console's security headers to every response, and `no-store` to pages (a new
    key is shown on one; it must not stay in a cache)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *SECURITY_HEADERS]
                if not scope["path"].startswith(f"{CONSOLE_PREFIX}/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


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


def create_console(state: AppState) -> FastAPI:
    from glmaas.api.console import operator, sign_in, tenant

    console = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(check_csrf)])
    console.state.glmaas = state
    for module in (sign_in, operator, tenant):
        console.include_router(module.router)
    console.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    console.add_middleware(SecurityHeaders)

    @console.exception_handler(Denied)
    async def _denied(request: Request, exc: Denied) -> Response:
        if isinstance(exc, SignInRequired) and request.method == "GET":
            return RedirectResponse(f"{CONSOLE_PREFIX}/login", status_code=303)
        return render(request, "error.html", exc.status, message=str(exc))

    @console.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        message = "No such page." if exc.status_code == 404 else "That is not allowed here."
        return render(request, "error.html", exc.status_code, message=message)

    @console.get("/")
    async def home(request: Request) -> Response:
        role = session_of(request).role
        target = {Role.OPERATOR: "/accounts", Role.TENANT: "/account"}.get(role, "/login")
        return RedirectResponse(f"{CONSOLE_PREFIX}{target}", status_code=303)

    return console
