"""A metered run: one admitted request that sells tokens, from its admission to its one
settlement. Every resource shares it: interactive routes (through `api/metered.py`) and
background work (batch lines, async tasks) alike.

    admit ─► generate (durable progress, deadline, cancellation) ─► exactly one settlement

`MeteredRun.generate` passes an engine's deltas through, counting them, making a stream's
progress durable before its tokens are delivered, and settling exactly once however iteration
ends: finished, failed, timed out, or cancelled because the client went away. A caller builds its
prompt, calls `start_run`, and serialises what `generate` yields; it never settles by hand.
A request that sells only its input (an embedding) runs its work through `MeteredRun.compute`
instead: the same deadline and the same one settlement, with no tokens produced.

A run that answers a client (`bills_on_delivery`) is billed only for what reached the client:
nothing unless the response carrying it started (`deliver`). A whole reply (not streamed) is
therefore settled when its response starts, not when generation ends, and a reply whose
response could not be started (a fault between generation and the status line) is settled
unbilled. Background work stores its result instead, and is billed when it ends.

Admission, progress and settlement are awaited: each is one step of the books, which the meter
runs off the event loop, together with concurrent requests' steps, when it waits on the network
(`Meter.admit_async` and its siblings). A settlement is shielded from
cancellation, since it often runs while a disconnect cancels the request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio

from glmaas.platform.auth import Principal
from glmaas.platform.metering import (
    Admission,
    AdmissionAsk,
    Finish,
    Meter,
    Outcome,
    RequestStatus,
    SettlementAsk,
    UsageSource,
)


class GenerationTimeout(Exception):
    """The request ran past the server's time limit; it is stopped and billed as produced."""


class ShutdownCut(GenerationTimeout):
    """The server is shutting down and its drain time ran out before the run ended. A limit of
    the server's like a timeout, so every resource ends it as it ends one (a stream is told
    in-band, as of an engine fault; billed as produced); its usage record says `error`."""


class _UsageShape(Protocol):
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_prompt_tokens(self) -> int: ...
    @property
    def estimated(self) -> bool: ...


class DeltaShape(Protocol):
    """What the run reads of an engine's delta (`glmaas.engines.base.Delta` has it)."""

    @property
    def token_count(self) -> int: ...
    @property
    def exact_count(self) -> bool: ...
    @property
    def usage(self) -> _UsageShape | None: ...
    @property
    def finish_reason(self) -> str | None: ...


D = TypeVar("D", bound=DeltaShape)
T = TypeVar("T")


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
    # Billed only once the response carrying it has started (see the module docstring).
    bills_on_delivery: bool = False
    delivered: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    first_token_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None
    # Our own count stands in for usage the engine did not report (an upstream's, see engines/chat.py).
    usage_estimated: bool = False
    # How generation ended, once it has.
    ended: RequestStatus | None = None
    # Written with the settlement, in its transaction: what background work makes of the result.
    finish: Finish | None = None
    # The end user the request named, written on its usage record.
    end_user: str | None = None
    # Set by the server's shutdown when its drain runs out (`cut_short`); read at each delta.
    cut: bool = False
    # Set on the event loop when the settlement starts, before it is awaited: a second caller
    # then leaves it to the first.
    settling: bool = field(default=False, init=False)

    @property
    def deadline(self) -> float:
        return self.arrived + self.timeout_s

    async def generate(self, stream: AsyncGenerator[D, None]) -> AsyncGenerator[D, None]:
        """The engine's deltas, passed through; settles exactly once however iteration ends, and
        closes `stream` (so the engine stops within one step) when iteration stops early."""
        status = RequestStatus.ABORTED
        try:
            async for delta in stream:
                now = time.monotonic()
                count = delta.token_count
                if count and self.first_token_at is None:
                    self.first_token_at = now
                self.completion_tokens += count
                if not delta.exact_count:
                    self.usage_estimated = True
                if delta.usage is not None:
                    # The engine's count is the truth; for a local engine it equals the sum of
                    # the deltas and the prompt admitted, an upstream's replaces our estimates.
                    self.prompt_tokens = delta.usage.prompt_tokens
                    self.completion_tokens = delta.usage.completion_tokens
                    self.cached_tokens = delta.usage.cached_prompt_tokens
                    self.usage_estimated = delta.usage.estimated
                    self.finish_reason = delta.finish_reason
                    status = RequestStatus.OK
                elif now > self.deadline:
                    status = RequestStatus.TIMEOUT
                    raise GenerationTimeout(f"generation passed the server's limit of {self.timeout_s:g} s")
                elif self.cut:
                    status = RequestStatus.ERROR
                    raise ShutdownCut("the server is shutting down; send the request again")
                if self.durable and self.admission.needs_progress(self.completion_tokens):
                    await self.meter.progress_async(self.admission, self.completion_tokens, self.cached_tokens)
                yield delta
        except GenerationTimeout as exc:
            self.finish_reason = "error" if isinstance(exc, ShutdownCut) else "timeout"
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
            await self._end(status)

    async def _end(self, status: RequestStatus) -> None:
        """The work is over: settle, unless it is a finished reply that still has to reach its
        client (it settles when it does, `deliver`)."""
        self.ended = status
        if not (status is RequestStatus.OK and self.bills_on_delivery and not self.delivered):
            await self.settle(status)

    def cut_short(self) -> None:
        """Stop the run at its next delta, as an engine fault would (the server's drain ran out)."""
        self.cut = True

    async def deliver(self) -> None:
        """The response that carries this run's output has started (a 2xx status line went out):
        from now on what it produced is billed, and a finished reply settles."""
        self.delivered = True
        if self.ended is RequestStatus.OK:
            await self.settle_if_open(RequestStatus.OK)

    async def compute(self, work: Awaitable[T]) -> T:
        """The result of `work`, a request that produces no tokens (its cost is its prompt);
        settles exactly once however it ends: done, failed, past the deadline, or cancelled."""
        status = RequestStatus.ABORTED
        try:
            with anyio.fail_after(max(0.0, self.deadline - time.monotonic())):
                result = await work
        except TimeoutError:
            status = RequestStatus.TIMEOUT
            self.finish_reason = "timeout"
            raise GenerationTimeout(f"the request passed the server's limit of {self.timeout_s:g} s") from None
        except Exception:
            status = RequestStatus.ERROR
            self.finish_reason = "error"
            raise
        else:
            status = RequestStatus.OK
            self.finish_reason = "stop"
            return result
        finally:
            await self._end(status)

    async def settle_if_open(self, status: RequestStatus) -> None:
        """Settle now unless `generate` already did (it settles on every path it runs)."""
        if not self.settling:
            await self.settle(status)

    async def settle(self, status: RequestStatus) -> None:
        """The run's one settlement (a second call does nothing); not cancelled once started."""
        if self.settling:
            return
        self.settling = True
        now = time.monotonic()
        outcome = Outcome(
            status=status,
            prompt_tokens=self.prompt_tokens,
            usage_source=UsageSource.ESTIMATED if self.usage_estimated else UsageSource.EXACT,
            end_user=self.end_user,
            cached_tokens=self.cached_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            queue_ms=(self.admission.admitted_at - self.arrived) * 1000,
            first_token_ms=(self.first_token_at - self.arrived) * 1000 if self.first_token_at else None,
            total_ms=(now - self.arrived) * 1000,
            billable=self._billable(status),
        )
        with anyio.CancelScope(shield=True):
            await self.meter.settle_async(SettlementAsk(self.admission, outcome, self.finish))

    def _billable(self, status: RequestStatus) -> bool:
        if self.bills_on_delivery:
            # A started stream delivered what it produced (within one durability step); a
            # response that never started delivered nothing.
            return self.delivered
        # Background work: a stored result, or what a stream made durable.
        return self.durable or status in (RequestStatus.OK, RequestStatus.ABORTED)

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


async def start_run(meter: Meter, principal: Principal, model: str, request_id: str, *, prompt_tokens: int,
                    max_tokens: int, arrived: float, durable: bool, timeout_s: float,
                    bills_on_delivery: bool = False, price_percent: int = 100,
                    finish: Finish | None = None, end_user: str | None = None) -> MeteredRun:
    """Admit the request (limits, a hold of its worst-case cost) and start its run, or raise the
    platform's refusal (`PlatformError`). `durable`: progress is saved before tokens are
    delivered (streams), so that a crash bills what was delivered. `bills_on_delivery`: the run
    answers a client, and is billed only once `deliver` says its response started.
    `price_percent`: sold at that share of the model's prices (batch lines). `finish`: a write
    that commits with the settlement (see `Finish`), so a result and its bill exist together or
    not at all. `end_user`: who the caller says the request is for, written on its usage record."""
    admission = await meter.admit_async(AdmissionAsk(principal, model, request_id, prompt_tokens, max_tokens,
                                                     price_percent))
    return MeteredRun(meter, admission, request_id, prompt_tokens, arrived, durable=durable, timeout_s=timeout_s,
                      bills_on_delivery=bills_on_delivery, finish=finish, end_user=end_user)
