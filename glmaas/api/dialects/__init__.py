"""The two wire dialects glmaas speaks, and which one a request speaks (by its path)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from glmaas.api.dialects.base import Dialect
from glmaas.api.dialects.openai import OPENAI
from glmaas.api.dialects.zhipu import ZHIPU
from glmaas.api.errors import ApiError

DIALECTS: tuple[Dialect, ...] = (OPENAI, ZHIPU)

__all__ = ["DIALECTS", "OPENAI", "ZHIPU", "Dialect", "dialect_of", "response_for"]


def dialect_of(path: str) -> Dialect:
    """Zhipu under its prefix; OpenAI for everything else (including `/admin`)."""
    return ZHIPU if path.lstrip("/").startswith(ZHIPU.prefix.lstrip("/")) else OPENAI


def response_for(request: Request, error: ApiError) -> JSONResponse:
    """`error` as the response to `request`, in the request's dialect; its kind is kept on the
    request's state for its log line and metrics."""
    request.state.error_kind = error.kind
    return dialect_of(request.scope["path"]).error_response(error, getattr(request.state, "request_id", None))
