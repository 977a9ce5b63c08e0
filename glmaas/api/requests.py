"""Reading a request and answering it: ids, JSON bodies, the caller's credential, typed JSON
responses, in one place for every route.

A body goes through `parse_body`, which runs the edge checks of `glmaas.platform.validation`
(bounded depth and numbers before parsing, no NaN/Infinity, valid Unicode everywhere) before the
route's schema sees it; ids a client chooses are typed `RequestId` or `EndUserId` in the schema."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError, ValidationInfo
from starlette.requests import Request
from starlette.responses import Response

from glmaas.api.errors import ApiError, ErrorKind, from_platform
from glmaas.api.state import AppState
from glmaas.platform.auth import Principal
from glmaas.platform.errors import AuthError, PlatformError
from glmaas.platform.validation import (
    InvalidField,
    check_end_user_id,
    check_request_id,
    load_json,
)

M = TypeVar("M", bound=BaseModel)


def _request_id(value: str, info: ValidationInfo) -> str:
    return check_request_id(value, info.field_name or "request_id")


def _end_user_id(value: str, info: ValidationInfo) -> str:
    return check_end_user_id(value, info.field_name or "user_id")


# An id the client chooses for its request: it goes into the `x-request-id` header and the logs.
RequestId = Annotated[str, AfterValidator(_request_id)]
# An id of the client's own end user (`user_id`, `user`): it may reach a log line.
EndUserId = Annotated[str, AfterValidator(_end_user_id)]


def new_request_id() -> str:
    """Time-ordered and unique: `<yyyymmddHHMMSS><16 hex>` like the Zhipu platform's ids."""
    return _second_named(int(time.time())) + _random_hex()


@functools.lru_cache(maxsize=2)
def _second_named(second: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(second))


class _RandomHex:
    """16 hex digits of the operating system's randomness (what `secrets` reads), taken from
    4 KiB read at once: one system call per 512 ids instead of one per id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        with self._lock:  # ids are also made on worker threads: no two may share bytes
            if self._at == len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            self._at += 8
            return self._pool[self._at - 8:self._at].hex()


_random_hex = _RandomHex()


def take_request_id(request: Request, given: str | None) -> str:
    """The request's id (the client's `request_id`, else a new one), kept for error responses."""
    request_id = given or new_request_id()
    request.state.request_id = request_id
    return request_id


class JSONModelResponse(Response):
    """A response body that is a pydantic model, serialised by pydantic's own encoder."""

    media_type = "application/json"

    def render(self, content: BaseModel) -> bytes:
        return content.model_dump_json().encode()


def app_state(request: Request) -> AppState:
    return request.app.state.glmaas


@contextmanager
def refusals_on_wire() -> Iterator[None]:
    """Platform refusals raised inside become wire errors (`ApiError`)."""
    try:
        yield
    except PlatformError as exc:
        raise from_platform(exc) from None


def authenticate(request: Request) -> Principal:
    """The caller of `request`, kept on its state for its log line (`api/operations`)."""
    try:
        principal = app_state(request).authenticator.authenticate(request.headers.get("authorization"))
    except AuthError as exc:
        raise from_platform(exc) from None
    request.state.principal = principal
    return principal


async def parse_body(request: Request, schema: type[M]) -> M:
    """The body as `schema`, or a 400 that names the bad field. The edge checks (`load_json`) run
    before the schema: a body too deep, with too long a number, NaN or Infinity is refused as
    invalid JSON; a string that is not valid Unicode names its field."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(ErrorKind.INVALID_JSON, "The request body is empty; send a JSON object.")
    try:
        data: Any = load_json(raw)
    except InvalidField as exc:
        kind = ErrorKind.INVALID_JSON if exc.field == "body" else ErrorKind.INVALID_REQUEST
        raise ApiError(kind, str(exc), param=None if exc.field == "body" else exc.field) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(ErrorKind.INVALID_JSON, f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(ErrorKind.INVALID_JSON, "The request body must be a JSON object.")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "missing":
            raise ApiError(ErrorKind.MISSING_FIELD, f"Missing required parameter: {param}.", param=param) from None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(ErrorKind.INVALID_REQUEST, f"Invalid parameter {param}: {message}.", param=param) from None
