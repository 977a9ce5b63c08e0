"""The FastAPI application: routes of every resource, error handling in the caller's dialect,
and the middleware around them, outermost first: `ServerFaults` (any escaped exception → a
dialect-shaped 500, logged once), `MeteredRequests` (a run is billed only once its response
starts; each request's record goes to its metrics and log line), the shutdown drain's gate
(`api/operations`), `BodySizeLimit`. Background work (batch lines, async chat) runs in workers the lifespan starts."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.admin.router import caller_is_admin
from glmaas.api.admin.router import router as admin_router
from glmaas.api.async_chat.router import body_routes as async_chat_body_routes
from glmaas.api.async_chat.router import routes as async_chat_routes
from glmaas.api.batches.router import body_routes as batch_body_routes
from glmaas.api.batches.router import routes as batch_routes
from glmaas.api.chat.background import run_chat_item
from glmaas.api.chat.router import body_routes as chat_body_routes
from glmaas.api.chat.router import routes as chat_routes
from glmaas.api.completions.router import body_routes as completion_body_routes
from glmaas.api.completions.router import routes as completion_routes
from glmaas.api.console.app import CONSOLE_PREFIX, create_console
from glmaas.api.dialects import response_for
from glmaas.api.embeddings.background import run_embedding_item
from glmaas.api.embeddings.router import body_routes as embedding_body_routes
from glmaas.api.embeddings.router import routes as embedding_routes
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.faults import ServerFaults
from glmaas.api.files.router import routes as file_routes
from glmaas.api.fine_tuning.router import body_routes as fine_tuning_body_routes
from glmaas.api.fine_tuning.router import routes as fine_tuning_routes
from glmaas.api.fine_tuning.serving import base_gguf, load_model, publish_model, serve_all
from glmaas.api.housekeeping import retire_replica, run_housekeeping
from glmaas.api.metered import MeteredRequests
from glmaas.api.models.router import router as models_router
from glmaas.api.openapi import openapi_schema
from glmaas.api.operations import Operations
from glmaas.api.state import AppState
from glmaas.api.tokenizer.router import body_routes as tokenizer_body_routes
from glmaas.api.tokenizer.router import routes as tokenizer_routes
from glmaas.api.work import Runner, fail_exhausted, runner_for
from glmaas.jobs.fine_tuning_runner import FineTuningRunner
from glmaas.jobs.worker import Workers

# The resources that run in the background (batch lines, async tasks), by the endpoint they call.
BACKGROUND_RUNNERS: dict[str, Runner] = {"/v1/chat/completions": run_chat_item,
                                          "/v1/embeddings": run_embedding_item}
# Room for the multipart framing around an uploaded file of the largest size allowed.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class BodySizeLimit:
    """Refuses a body over `limit` bytes (`upload_limit` for a file upload): at once when
    Content-Length says so, otherwise as soon as the bytes read pass it. The rest is never read."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None) -> None:
        self.app = app
        self.body_limit = limit
        self.upload_limit = upload_limit or limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/files")
        limit = self.upload_limit if upload else self.body_limit
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await response_for(Request(scope), _too_large(limit))(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(ErrorKind.BODY_TOO_LARGE, f"The request body exceeds {limit} bytes.")


def create_app(state: AppState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        housekeeping = asyncio.create_task(run_housekeeping(state))
        await state.registry.start()
        background = None
        if state.batch_workers > 0:
            run_item = runner_for(BACKGROUND_RUNNERS)
            workers = Workers(state.db, state.blobs, state.meter.owner, lambda item: run_item(state, item),
                              count=state.batch_workers, lease_s=state.batch_lease_s,
                              max_attempts=state.batch_max_attempts,
                              exhausted=lambda item: fail_exhausted(state, item),
                              stopping=lambda: operations.drain.draining)
            background = asyncio.create_task(workers.run())
        training = None
        if state.data_dir is not None:
            await serve_all(state)
            if state.fine_tuning_jobs > 0:
                runner = FineTuningRunner(state.db, state.blobs, state.meter.owner, state.data_dir,
                                          lambda model, account: base_gguf(state, model, account),
                                          load_model, lambda job, engine: publish_model(state, job, engine),
                                          max_jobs=state.fine_tuning_jobs,
                                          lease_s=state.batch_lease_s, threads=state.fine_tuning_threads)
                training = asyncio.create_task(runner.run())
        yield
        housekeeping.cancel()
        for task in (background, training):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await state.registry.close()
        retire_replica(state)
        state.db.dispose()

    # /openapi.json is served below: the admin routes are listed to the admin only.
    app = FastAPI(title="glmaas", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.glmaas = state
    app.router.routes.extend([*chat_routes, *completion_routes, *tokenizer_routes, *embedding_routes, *file_routes,
                              *batch_routes, *async_chat_routes, *fine_tuning_routes])
    app.include_router(models_router)
    app.include_router(admin_router)
    app.mount(CONSOLE_PREFIX, create_console(state))
    # Each add goes outside the ones before it.
    app.add_middleware(BodySizeLimit, limit=state.max_body_bytes,
                       upload_limit=max(state.max_body_bytes, state.max_file_bytes + MULTIPART_OVERHEAD_BYTES))
    operations = Operations(state)  # metrics, probes, the shutdown drain, the request log
    operations.install(app)
    app.add_middleware(MeteredRequests, observe=operations.observe)
    app.add_middleware(ServerFaults)

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

    schemas: dict[bool, dict] = {}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        admin = caller_is_admin(request)
        if admin not in schemas:
            body_routes = (chat_body_routes + completion_body_routes + tokenizer_body_routes + embedding_body_routes
                           + batch_body_routes + async_chat_body_routes + fine_tuning_body_routes)
            schemas[admin] = openapi_schema(app, body_routes, admin=admin)
        return JSONResponse(schemas[admin])

    return app
