"""The metered run on the HTTP side: admission with refusals in the caller's dialect, and a
streaming response that settles its run even when its body is never sent.

The lifecycle itself (durable progress, cancellation, exactly one settlement) is
`glmaas.platform.metered`; a route builds its prompt, calls `admit`, and serialises what the
run's `generate` yields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from glmaas.api.errors import from_platform
from glmaas.api.state import AppState
from glmaas.platform.auth import Principal
from glmaas.platform.errors import PlatformError
from glmaas.platform.metered import MeteredRun, start_run
from glmaas.platform.metering import RequestStatus

__all__ = ["MeteredRun", "MeteredStream", "admit"]


def admit(state: AppState, principal: Principal, model: str, request_id: str, *, prompt_tokens: int,
          max_tokens: int, arrived: float, stream: bool) -> MeteredRun:
    """Take the request into the books and start its run, or raise the refusal as an `ApiError`."""
    try:
        return start_run(state.meter, principal, model, request_id, prompt_tokens=prompt_tokens,
                         max_tokens=max_tokens, arrived=arrived, durable=stream,
                         timeout_s=state.request_timeout)
    except PlatformError as exc:
        raise from_platform(exc) from None


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
            self.run.settle_if_open(RequestStatus.ABORTED)
