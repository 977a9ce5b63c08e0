"""One log line per request, on the `glmaas.requests` logger: who asked (account and key id, never
the secret), what (model, dialect, endpoint), how it was answered (status, error code), what it
produced (prompt, cached and completion tokens) and how long it took (queue, first token, total,
in milliseconds). `--log-format json` writes each line as one JSON object (`JsonLines`). The
prompt and the output are never logged, unless the operator asks for them with `--log-content`
(then the request and response bodies are, each cut at `CONTENT_LIMIT` bytes)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.metered import RequestRecord

log = logging.getLogger("glmaas.requests")

CONTENT_LIMIT = 64 * 1024


def request_fields(record: RequestRecord, endpoint: str, dialect: str) -> dict[str, Any]:
    """The fields of `record`'s log line."""
    principal = record.noted("principal")
    error = record.noted("error_kind")
    if error is None and record.status >= 500:
        error = "internal"
    runs = record.runs
    first = runs[0] if runs else None
    fields: dict[str, Any] = {
        "request_id": record.noted("request_id"),
        "method": record.scope["method"],
        "endpoint": endpoint,
        "dialect": dialect,
        "account": principal.account_id if principal is not None else None,
        "key_id": principal.key_id if principal is not None else None,
        "model": record.model,
        "status": record.status,
        "error": str(error) if error is not None else None,
        "prompt_tokens": sum(r.prompt_tokens for r in runs),
        "cached_tokens": sum(r.cached_tokens for r in runs),
        "completion_tokens": sum(r.completion_tokens for r in runs),
        "finish_reason": first.finish_reason if first is not None else None,
        "outcome": str(first.ended) if first is not None and first.ended is not None else None,
        "queue_ms": _ms(first.admission.admitted_at - first.arrived) if first is not None else None,
        "first_token_ms": (_ms(first.first_token_at - first.arrived)
                           if first is not None and first.first_token_at is not None else None),
        "total_ms": _ms((record.ended or time.monotonic()) - record.started),
    }
    for name in ("request_body", "response_body"):
        content = record.noted(name)
        if content is not None:
            fields[name] = bytes(content[:CONTENT_LIMIT]).decode("utf-8", errors="replace")
    return fields


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def write_line(record: RequestRecord, endpoint: str, dialect: str) -> None:
    """Log one request: its fields ride on the log record for `JsonLines`; the message is their
    text form. Nothing is built when the line would not be written."""
    if log.isEnabledFor(logging.INFO):
        fields = request_fields(record, endpoint, dialect)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and not k.endswith("_body"))
        # `log.info` would first walk the stack for the caller's file, line and function, which
        # no formatter here prints; on the request path that walk was about a tenth of the line's cost.
        # `handle` still applies the logger's filters and handlers, as `info` does.
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, "%s", (text,), None, extra={"fields": fields}))


class TextLines(logging.Formatter):
    """logging's own formatter, with the time of each second formatted once rather than once a
    line: in a profile of the server under load, `strftime` was about a sixth of the cost of a
    request's log line."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        # (second, datefmt, its text), replaced whole: a formatter may serve several handlers.
        self._second: tuple[int, str | None, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        second, fmt, text = self._second
        if second != int(record.created) or fmt != datefmt:
            second = int(record.created)
            text = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._second = (second, datefmt, text)
        return text if datefmt else self.default_msec_format % (text, record.msecs)


class JsonLines(TextLines):
    """Every log record as one JSON object on one line: time, level, logger, and either a request
    line's fields or the message (with the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                                "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if fields is not None:
            line |= fields
        else:
            line["message"] = record.getMessage()
            if record.exc_info:
                line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


JsonLines.converter = time.gmtime


class ContentCapture:
    """With `--log-content`: keeps the request and response bodies (up to `CONTENT_LIMIT` bytes
    each) on the request's state for its log line. Not installed otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        asked, answered = state.setdefault("request_body", bytearray()), state.setdefault("response_body", bytearray())

        async def reading() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(asked) < CONTENT_LIMIT:
                asked.extend(message.get("body", b""))
            return message

        async def writing(message: Message) -> None:
            if message["type"] == "http.response.body" and len(answered) < CONTENT_LIMIT:
                answered.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, reading, writing)
