"""The OpenAPI description served at `/openapi.json`.

FastAPI describes the routes it builds from signatures; the chat routes are plain Starlette
routes that read their body by hand (`parse_body`), so they are described here from their wire
schemas: the request model, the reply (JSON, or SSE when `stream` is true) and the error body of
their dialect. `/admin` is listed to the admin only.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from glmaas.api.admin.router import ADMIN_PREFIX
from glmaas.api.dialects import OPENAI, ZHIPU, Dialect, dialect_of

REF = "#/components/schemas/{model}"

# The error body of each dialect (`api/dialects/`).
ERROR_SCHEMAS: dict[str, dict] = {
    OPENAI.name: {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
    },
    ZHIPU.name: {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string", "pattern": "^[0-9]+$"}, "message": {"type": "string"}}}},
    },
}


@dataclass(frozen=True)
class BodyRoute:
    """A route that parses its JSON body by hand, as the schema shows it."""

    path: str
    summary: str
    request: type[BaseModel]
    response: type[BaseModel]
    # The reply is SSE when the body says `stream: true`.
    streams: bool = False
    method: str = "post"


def openapi_schema(app: FastAPI, body_routes: list[BodyRoute], *, admin: bool) -> dict:
    """The schema of `app`'s routes plus `body_routes`; `/admin` only when `admin`."""
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    if not admin:
        schema["paths"] = {path: ops for path, ops in schema["paths"].items() if not path.startswith(ADMIN_PREFIX)}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update({f"{name.capitalize()}Error": body for name, body in ERROR_SCHEMAS.items()})
    schema.setdefault("components", {})["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for route in body_routes:
        for model in (route.request, route.response):
            _add_model(components, model)
        dialect = dialect_of(route.path)
        schema["paths"].setdefault(route.path, {})[route.method] = _operation(route, dialect)
    return schema


def _add_model(components: dict, model: type[BaseModel]) -> None:
    body = model.model_json_schema(ref_template=REF)
    components.update(body.pop("$defs", {}))
    components[model.__name__] = body


def _operation(route: BodyRoute, dialect: Dialect) -> dict:
    reply = {"application/json": {"schema": {"$ref": REF.format(model=route.response.__name__)}}}
    if route.streams:
        reply["text/event-stream"] = {"schema": {"type": "string"}}
    error = {"application/json": {"schema": {"$ref": REF.format(model=f"{dialect.name.capitalize()}Error")}}}
    return {
        "summary": route.summary,
        "operationId": f"{dialect.name}_{route.path.strip('/').replace('/', '_')}",
        "security": [{"apiKey": []}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": REF.format(model=route.request.__name__)}}}},
        "responses": {"200": {"description": "The reply", "content": reply},
                      "default": {"description": f"An error in the {dialect.name} dialect", "content": error}},
    }
