"""What an operator runs a replica with: Prometheus metrics (`metrics`), the health and readiness
probes (`probes`), the shutdown drain (`drain`) and one log line per request (`request_log`).
`Operations` puts them on an app; docs/operations.md is the operator's side of it."""

from __future__ import annotations

import inspect

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from glmaas.api.admin.router import caller_is_admin
from glmaas.api.dialects import dialect_of, response_for
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.metered import RequestRecord
from glmaas.api.operations.drain import UNGATED_PATHS, Drain, DrainGate
from glmaas.api.operations.metrics import ServerMetrics
from glmaas.api.operations.probes import healthz, readyz
from glmaas.api.operations.request_log import ContentCapture, write_line
from glmaas.api.state import AppState

__all__ = ["Drain", "Operations"]

# A request no route matched, as its endpoint label (the path itself would let clients make
# series without end).
UNMATCHED = "unmatched"


class Operations:
    """The metrics, probes, drain and request log of one app."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.drain = Drain(state.drain_timeout)
        self.metrics = ServerMetrics(state, self.drain)
        self.routes = [Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
                       Route("/readyz", readyz, methods=["GET"], include_in_schema=False),
                       Route("/metrics", self.serve_metrics, methods=["GET"], include_in_schema=False)]
        self._templates: dict[tuple[object, str], str] = {}

    def install(self, app: FastAPI) -> None:
        """The routes, and the middleware that must sit inside `MeteredRequests` (add this after
        the app's innermost middleware and before `MeteredRequests`)."""
        app.state.operations = self
        app.router.routes.extend(self.routes)
        if self.state.log_content:
            app.add_middleware(ContentCapture)
        app.add_middleware(DrainGate, drain=self.drain)

    def _endpoint(self, scope: Scope, dialect: str) -> str:
        """The path template of the route that served the request. FastAPI's routes leave
        themselves in the scope; Starlette's leave their endpoint, looked up once in the routes of
        the app that served it (one function may serve a path in each dialect; a mount's endpoint
        is the app it mounts, told by its mount path). A mounted app (the console) leaves its mount path in `root_path`."""
        prefix = scope.get("root_path", "")
        route = scope.get("route")
        if getattr(route, "path", None):
            return prefix + route.path
        handler = scope.get("endpoint")
        if handler is None:
            return UNMATCHED
        if not (inspect.isfunction(handler) or inspect.ismethod(handler)):
            return prefix or UNMATCHED  # a mounted app (static files): its mount path
        key = (handler, dialect)
        template = self._templates.get(key)
        if template is None:  # first seen
            for candidate in getattr(scope.get("app"), "routes", ()):
                if hasattr(candidate, "endpoint") and hasattr(candidate, "path"):
                    path = prefix + candidate.path
                    self._templates.setdefault((candidate.endpoint, dialect_of(path).name), path)
            template = self._templates.setdefault(key, UNMATCHED)
        return template

    async def serve_metrics(self, request: Request) -> Response:
        """The metrics, to the admin token's bearer (`--metrics-port` serves them without one)."""
        if not caller_is_admin(request):
            return response_for(request, ApiError(ErrorKind.ADMIN_AUTH, "/metrics needs the admin token."))
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def observe(self, record: RequestRecord) -> None:
        """A request has been answered: its metrics and its log line (`MeteredRequests`)."""
        scope = record.scope
        if scope["path"] in UNGATED_PATHS:
            return  # probes and scrapes: seconds apart, forever; not worth a line each
        dialect = dialect_of(scope["path"]).name
        endpoint = self._endpoint(scope, dialect)
        error = record.noted("error_kind")
        self.metrics.observe_request(endpoint, dialect, record.model or "", record.status, error)
        write_line(record, endpoint, dialect)
