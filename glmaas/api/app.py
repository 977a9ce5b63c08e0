"""The FastAPI application: routes of every resource, error handling in the caller's dialect,
and the request-size guard."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.admin.router import ADMIN_PREFIX, caller_is_admin
from glmaas.api.admin.router import router as admin_router
from glmaas.api.chat.router import routes as chat_routes
from glmaas.api.dialects import response_for
from glmaas.api.embeddings.router import routes as embedding_routes
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.housekeeping import retire_replica, run_housekeeping
from glmaas.api.models.router import router as models_router
from glmaas.api.state import AppState
from glmaas.api.tokenizer.router import routes as tokenizer_routes

log = logging.getLogger("glmaas.api")


class BodySizeLimit:
    """Refuses a body over `limit` bytes: at once when Content-Length says so, otherwise as soon as
    the bytes read pass it. The rest is never read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(ErrorKind.BODY_TOO_LARGE, f"The request body exceeds {self.limit} bytes.")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await response_for(Request(scope), too_large)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        await self.app(scope, limited, send)


def create_app(state: AppState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        housekeeping = asyncio.create_task(run_housekeeping(state))
        yield
        housekeeping.cancel()
        await state.registry.close()
        retire_replica(state)
        state.db.dispose()

    # /openapi.json is served below: the admin routes are listed to the admin only.
    app = FastAPI(title="glmaas", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.glmaas = state
    app.router.routes.extend(chat_routes)
    app.router.routes.extend(tokenizer_routes)
    app.router.routes.extend(embedding_routes)
    app.include_router(models_router)
    app.include_router(admin_router)
    app.add_middleware(BodySizeLimit, limit=state.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):  # type: ignore[no-untyped-def]
        return response_for(request, exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):  # type: ignore[no-untyped-def]
        if exc.status_code == 405:
            return response_for(request, ApiError(ErrorKind.METHOD_NOT_ALLOWED, "Method not allowed."))
        return response_for(request, ApiError(ErrorKind.ROUTE_NOT_FOUND, f"No such API: {request.url.path}"))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        return response_for(request, ApiError(ErrorKind.INVALID_REQUEST, "Invalid request."))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return response_for(request, ApiError(ErrorKind.INTERNAL, "Internal error; it has been logged."))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    schemas: dict[bool, dict] = {}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        admin = caller_is_admin(request)
        if admin not in schemas:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            if not admin:
                schema["paths"] = {path: ops for path, ops in schema["paths"].items()
                                   if not path.startswith(ADMIN_PREFIX)}
            schemas[admin] = schema
        return JSONResponse(schemas[admin])

    return app
