"""What a client gets when the server itself fails: the outermost middleware of the app.

Any exception that escapes a route (a bug, a database that went away) becomes a 500 in the
caller's dialect, with a request id in the `x-request-id` header and in the message, and is
logged once, with its traceback and that id. Never plain text, never a stack trace on the wire.

Why a middleware of our own rather than an exception handler for `Exception`: Starlette hands
such a handler to its `ServerErrorMiddleware`, which sends the handler's response and then
re-raises, so that the server logs the error a second time (uvicorn's "Exception in ASGI
application"); and when the failure is in sending the status line itself (a header the server
cannot encode), it sends nothing and the server answers in plain text. This middleware sits just
inside `ServerErrorMiddleware` and outside everything else: it catches, logs once, answers if
no response has started, and does not re-raise. If a response had started, the connection is
closed; a stream tells its own faults in-band before that (`api/chat/serving.py`).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.dialects import dialect_of
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.requests import new_request_id

log = logging.getLogger("glmaas.api")


class ServerFaults:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            await send(message)
            if message["type"] == "http.response.start":
                started = True

        try:
            await self.app(scope, receive, watched)
        except Exception:
            request = Request(scope)
            # The client's own id when it passed the edge checks (it is set only then), else ours.
            request_id = getattr(request.state, "request_id", None) or new_request_id()
            # The path is the client's: repr keeps its control characters out of the log line.
            log.exception("request %s: unhandled error on %s %r", request_id, request.method, request.scope["path"])
            if started:
                return
            error = ApiError(ErrorKind.INTERNAL, f"The server failed on this request (request id {request_id}); "
                                                 f"the error has been logged.")
            response = dialect_of(request.scope["path"]).error_response(error, request_id)
            try:
                await response(scope, receive, send)
            except Exception:
                log.exception("request %s: the error response could not be sent either", request_id)
