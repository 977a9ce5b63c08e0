"""The web console at `/console`: a small application of its own, mounted into the API's, with
server-rendered pages (Jinja, autoescaped), its own static files and no inline script, so a strict
Content-Security-Policy holds. Refusals are HTML pages here, not the API's JSON errors."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.console import operator, sign_in, tenant
from glmaas.api.console.guard import Denied, SignInRequired, check_csrf, session_of
from glmaas.api.console.pages import CONSOLE_PREFIX, HERE, render
from glmaas.api.console.session import Role
from glmaas.api.state import AppState

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


def create_console(state: AppState) -> FastAPI:
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
