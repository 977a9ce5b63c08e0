"""Reading a request: ids, JSON bodies, the caller's credential, in one place for every route."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from glmaas.api.errors import ApiError
from glmaas.api.state import AppState
from glmaas.platform.auth import Principal
from glmaas.platform.errors import AuthError

M = TypeVar("M", bound=BaseModel)


def new_request_id() -> str:
    """Time-ordered and unique: `<yyyymmddHHMMSS><16 hex>` like the Zhipu platform's ids."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(8)


def app_state(request: Request) -> AppState:
    return request.app.state.glmaas


def authenticate(request: Request) -> Principal:
    try:
        return app_state(request).authenticator.authenticate(request.headers.get("authorization"))
    except AuthError as exc:
        raise ApiError(f"auth_{exc.failure}", str(exc)) from None


async def parse_body(request: Request, schema: type[M]) -> M:
    """The body as `schema`, or a 400 that names the bad field."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError("invalid_json", "The request body is empty; send a JSON object.")
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError("invalid_json", f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_json", "The request body must be a JSON object.")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "missing":
            raise ApiError("missing_field", f"Missing required parameter: {param}.", param=param) from None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError("invalid_request", f"Invalid parameter {param}: {message}.", param=param) from None
