"""The metered run on the HTTP side: admission with refusals in the caller's dialect, a streaming
response that settles its run even when its body is never sent, and the middleware that bills a
run only once its response has started.

The lifecycle itself (durable progress, cancellation, exactly one settlement) is
`glmaas.platform.metered`; a route builds its prompt, calls `admit`, and serialises what the
run's `generate` yields.

The money rule of the HTTP side: a request is never billed beyond what was delivered. `admit`
registers each run with the request being served; `MeteredRequests` tells the runs when a 2xx
response starts (`MeteredRun.deliver`: a whole reply settles then, a stream's tokens become
billable), and when the request's ASGI call ends, however it ends, settles every run whose
response never started and that is still open, unbilled. So a fault between generation and the
status line costs the client nothing, and no admitted request leaves without its settlement.

`MeteredRequests` keeps a `RequestRecord` of each request (its runs, the model asked, the status
sent) and hands it, once the request has ended, to an observer: the app's metrics and request
log line (`glmaas.api.operations`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.errors import from_platform
from glmaas.api.state import AppState
from glmaas.platform.auth import Principal
from glmaas.platform.errors import PlatformError
from glmaas.platform.metered import MeteredRun, start_run
from glmaas.platform.metering import RequestStatus

__all__ = ["MeteredRequests", "MeteredRun", "MeteredStream", "RequestRecord", "admit", "current_record"]

log = logging.getLogger("glmaas.api")


@dataclass(eq=False)
class RequestRecord:
    """One HTTP request as it is served: the runs it admitted (billed once its response starts),
    the model it asked for and how it was answered; what its log line and its metrics are made of.
    The request id, the caller and the error sent are read from the request's state, where the
    route (`take_request_id`, `authenticate`) and the error handlers (`response_for`) leave them."""

    scope: Scope
    started: float = field(default_factory=time.monotonic)
    runs: list[MeteredRun] = field(default_factory=list)
    model: str | None = None
    status: int = 0  # the HTTP status sent; 0 while none was (`CLIENT_CLOSED` if none ever was)
    ended: float | None = None

    def noted(self, name: str) -> Any:
        """What serving the request left in its state under `name` (None if nothing)."""
        return self.scope.get("state", {}).get(name)


# The status a request's record holds when its client went away before any response was sent
# (nginx's convention; nothing is sent with it).
CLIENT_CLOSED = 499

# The request being served (set by `MeteredRequests`). A context variable, so that `admit` needs
# no request: the record is shared with the tasks that Starlette starts for a response, which copy
# the context.
_current: ContextVar[RequestRecord | None] = ContextVar("glmaas_request", default=None)


def current_record() -> RequestRecord | None:
    """The record of the HTTP request being served, if any."""
    return _current.get()


async def admit(state: AppState, principal: Principal, model: str, request_id: str, *, prompt_tokens: int,
                max_tokens: int, arrived: float, stream: bool, end_user: str | None = None) -> MeteredRun:
    """Take the request into the books and start its run, or raise the refusal as an `ApiError`.
    The run is billed only once its response starts (`MeteredRequests`)."""
    record = _current.get()
    if record is not None:
        record.model = model
    try:
        # Outside a request served through `MeteredRequests` nothing would deliver the run, so
        # it is billed as background work is.
        run = await start_run(state.meter, principal, model, request_id, prompt_tokens=prompt_tokens,
                              max_tokens=max_tokens, arrived=arrived, durable=stream,
                              timeout_s=state.request_timeout, bills_on_delivery=record is not None,
                              end_user=end_user)
    except PlatformError as exc:
        raise from_platform(exc) from None
    if record is not None:
        record.runs.append(run)
    return run


class MeteredRequests:
    """Delivery and the last settlement of the runs a request admitted: each is told when a 2xx
    response starts, and one whose response never started is settled, unbilled, when the request
    ends if it is still open. Then the request's record goes to `observe` (its log line and
    metrics), once, however the request ended."""

    def __init__(self, app: ASGIApp, observe: Callable[[RequestRecord], None] | None = None) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(scope)
        runs = record.runs
        token = _current.set(record)

        async def delivering(message: Message) -> None:
            await send(message)
            # After the send: a status line that could not go out delivered nothing. The body
            # follows only after this returns, so the settlement is written before the client
            # can read the reply.
            if message["type"] == "http.response.start":
                record.status = message["status"]
                if 200 <= message["status"] < 300:
                    for run in runs:
                        await run.deliver()

        try:
            await self.app(scope, receive, delivering)
        except Exception:
            # `ServerFaults` answers an escaped error with a 500 (when no response had started).
            record.status = record.status or 500
            raise
        finally:
            if not record.status:
                record.status = CLIENT_CLOSED  # cancelled: the client left before any response
            _current.reset(token)
            # A run whose response never started is settled here, unbilled, if nothing settled it
            # (a fault between admission and the status line). A delivered one settles by its own
            # lifecycle, which may outlast the request (work handed to a background task).
            for run in runs:
                if not run.delivered:
                    await run.settle_if_open(RequestStatus.ERROR)
            record.ended = time.monotonic()
            if self.observe is not None:
                try:
                    self.observe(record)
                except Exception:  # the request is served; its record must not fail it
                    log.exception("the record of a request could not be written")


class MeteredStream(StreamingResponse):
    """An SSE response that settles its request even if the body is never iterated (the client
    left before the first byte): the admission must end in a settlement either way."""

    def __init__(self, run: MeteredRun, content: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.run.settle_if_open(RequestStatus.ABORTED)
