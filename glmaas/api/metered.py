"""The metered run: the lifecycle every resource that sells tokens shares.

    admit ─► generate (durable progress, deadline, cancellation) ─► exactly one settlement

`admit` takes the request into the platform's books (limits, worst-case hold) or refuses it in the
caller's dialect. `MeteredRun.generate` passes an engine's deltas through, counting them, making
a stream's progress durable before its tokens are delivered, and settling exactly once however
iteration ends: finished, failed, timed out, or cancelled by a client that went away.
`MeteredStream` settles a stream whose body is never iterated. A resource (chat, completions,
embeddings, a batch line) builds its prompt, calls `admit`, and serialises what `generate`
yields; it never settles by hand.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from glmaas.api.errors import from_platform
from glmaas.api.state import AppState
from glmaas.engines.base import Delta, Engine, EngineError, GenerationRequest, Usage
from glmaas.platform.auth import Principal
from glmaas.platform.errors import PlatformError
from glmaas.platform.metering import Admission, Meter, Outcome, RequestStatus


class GenerationTimeout(EngineError):
    """The request ran past the server's time limit; it is stopped and billed as produced."""


@dataclass
class MeteredRun:
    """One admitted request and what it has produced so far."""

    meter: Meter
    admission: Admission
    request_id: str
    prompt_tokens: int
    arrived: float
    # Streams make progress durable before delivering tokens (see platform.metering).
    durable: bool
    timeout_s: float
    created: int = field(default_factory=lambda: int(time.time()))
    first_token_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None

    @property
    def deadline(self) -> float:
        return self.arrived + self.timeout_s

    async def generate(self, engine: Engine, request: GenerationRequest) -> AsyncIterator[Delta]:
        """The engine's deltas for `request`; settles exactly once however iteration ends."""
        status = RequestStatus.ABORTED
        stream = engine.generate(request)
        try:
            async for delta in stream:
                now = time.monotonic()
                if delta.token_ids and self.first_token_at is None:
                    self.first_token_at = now
                self.completion_tokens += len(delta.token_ids)
                if delta.usage is not None:
                    # The engine's count is the truth; it equals the sum of the deltas.
                    self.completion_tokens = delta.usage.completion_tokens
                    self.cached_tokens = delta.usage.cached_prompt_tokens
                    self.finish_reason = delta.finish_reason
                    status = RequestStatus.OK
                elif now > self.deadline:
                    status = RequestStatus.TIMEOUT
                    raise GenerationTimeout(f"generation passed the server's limit of {self.timeout_s:g} s")
                if self.durable and self.admission.needs_progress(self.completion_tokens):
                    self.meter.progress(self.admission, self.completion_tokens, self.cached_tokens)
                yield delta
        except GenerationTimeout:
            self.finish_reason = "timeout"
            raise
        except Exception:
            # Engine faults and bugs alike; a disconnect (cancellation) stays aborted.
            status = RequestStatus.ERROR
            self.finish_reason = "error"
            raise
        finally:
            # Shielded: on a client disconnect this runs inside a cancelled scope.
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self.settle(status)

    def settle_if_open(self, status: RequestStatus) -> None:
        """Settle now unless `generate` already did (it settles on every path it runs)."""
        if not self.admission.settled:
            self.settle(status)

    def settle(self, status: RequestStatus) -> None:
        now = time.monotonic()
        self.meter.settle(
            self.admission,
            Outcome(
                status=status,
                cached_tokens=self.cached_tokens,
                completion_tokens=self.completion_tokens,
                finish_reason=self.finish_reason,
                queue_ms=(self.admission.admitted_at - self.arrived) * 1000,
                first_token_ms=(self.first_token_at - self.arrived) * 1000 if self.first_token_at else None,
                total_ms=(now - self.arrived) * 1000,
                # A stream delivered what it produced; a failed plain request delivered nothing.
                billable=self.durable or status in (RequestStatus.OK, RequestStatus.ABORTED),
            ),
        )

    def usage(self) -> Usage:
        """What the client is told, and what the settlement records."""
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def rate_limit_headers(self) -> dict[str, str]:
        """`x-ratelimit-*` of the key's limits, as OpenAI sends them."""
        left = self.admission.grant.remaining
        headers: dict[str, str] = {}
        if left is not None and left.limit_requests is not None:
            headers["x-ratelimit-limit-requests"] = str(left.limit_requests)
            headers["x-ratelimit-remaining-requests"] = str(left.requests)
        if left is not None and left.limit_tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(left.limit_tokens)
            headers["x-ratelimit-remaining-tokens"] = str(left.tokens)
        return headers


def admit(state: AppState, principal: Principal, model: str, request_id: str, *, prompt_tokens: int,
          max_tokens: int, arrived: float, stream: bool) -> MeteredRun:
    """Take the request into the books (limits, a hold of its worst-case cost), or raise the
    platform's refusal as an `ApiError`."""
    try:
        admission = state.meter.admit(principal, model, request_id, prompt_tokens, max_tokens)
    except PlatformError as exc:
        raise from_platform(exc) from None
    return MeteredRun(state.meter, admission, request_id, prompt_tokens, arrived, durable=stream,
                      timeout_s=state.request_timeout)


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
