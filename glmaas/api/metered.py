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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glmaas.api.errors import from_platform
from glmaas.api.state import AppState
from glmaas.platform.auth import Principal
from glmaas.platform.errors import PlatformError
from glmaas.platform.metered import MeteredRun, start_run
from glmaas.platform.metering import RequestStatus

__all__ = ["MeteredRequests", "MeteredRun", "MeteredStream", "admit"]

# The runs admitted while serving the current HTTP request (set by `MeteredRequests`). A context
# variable, so that `admit` needs no request: the list object is shared with the tasks that
# Starlette starts for a response, which copy the context.
_request_runs: ContextVar[list[MeteredRun] | None] = ContextVar("glmaas_request_runs", default=None)


async def admit(state: AppState, principal: Principal, model: str, request_id: str, *, prompt_tokens: int,
                max_tokens: int, arrived: float, stream: bool, end_user: str | None = None) -> MeteredRun:
    """Take the request into the books and start its run, or raise the refusal as an `ApiError`.
    The run is billed only once its response starts (`MeteredRequests`)."""
    runs = _request_runs.get()
    try:
        # Outside a request served through `MeteredRequests` nothing would deliver the run, so
        # it is billed as background work is.
        run = await start_run(state.meter, principal, model, request_id, prompt_tokens=prompt_tokens,
                              max_tokens=max_tokens, arrived=arrived, durable=stream, timeout_s=state.request_timeout,
                              bills_on_delivery=runs is not None, end_user=end_user)
    except PlatformError as exc:
        raise from_platform(exc) from None
    if runs is not None:
        runs.append(run)
    return run


class MeteredRequests:
    """Delivery and the last settlement of the runs a request admitted: each is told when a 2xx
    response starts, and one whose response never started is settled, unbilled, when the request
    ends if it is still open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runs: list[MeteredRun] = []
        token = _request_runs.set(runs)

        async def delivering(message: Message) -> None:
            await send(message)
            # After the send: a status line that could not go out delivered nothing. The body
            # follows only after this returns, so the settlement is written before the client
            # can read the reply.
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                for run in runs:
                    await run.deliver()

        try:
            await self.app(scope, receive, delivering)
        finally:
            _request_runs.reset(token)
            # A run whose response never started is settled here, unbilled, if nothing settled it
            # (a fault between admission and the status line). A delivered one settles by its own
            # lifecycle, which may outlast the request (work handed to a background task).
            for run in runs:
                if not run.delivered:
                    await run.settle_if_open(RequestStatus.ERROR)


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
