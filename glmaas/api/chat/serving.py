"""Running a chat completion: prompt → admit → generate → settle, and the two wire forms of the
result (one JSON body, or SSE chunks)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from glmaas.api.chat.protocol import ChatRequest
from glmaas.api.errors import ApiError, Dialect, error_body, from_platform
from glmaas.api.state import AppState
from glmaas.engines.base import Delta, Engine, EngineError, GenerationRequest, PromptTooLong, SamplingParams
from glmaas.model.chat_template import ChatTemplateError, render_chat
from glmaas.platform.auth import Principal
from glmaas.platform.errors import PlatformError
from glmaas.platform.metering import Admission, Outcome, Status

# When the client sets no limit, a reply may run to the end of the context, capped here.
DEFAULT_MAX_TOKENS = 1024


class GenerationTimeout(EngineError):
    """The request ran past the server's time limit; it is stopped and billed as produced."""


@dataclass
class ChatRun:
    """One admitted chat request and what it has produced so far."""

    state: AppState
    engine: Engine
    request: ChatRequest
    request_id: str
    admission: Admission
    prompt_ids: tuple[int, ...]
    max_tokens: int
    arrived: float
    # Streams make progress durable before delivering tokens (see platform.metering).
    durable: bool = False
    deadline: float = float("inf")
    created: int = field(default_factory=lambda: int(time.time()))
    first_token_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str | None = None

    async def deltas(self) -> AsyncIterator[Delta]:
        """The engine's deltas; settles exactly once however iteration ends."""
        status: Status = "aborted"
        sampling = SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.request.temperature,
            top_p=self.request.top_p,
            seed=self.request.seed,
            stop=self.request.stop,
        )
        stream = self.engine.generate(GenerationRequest(self.request_id, self.prompt_ids, sampling))
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
                    status = "ok"
                elif now > self.deadline:
                    status = "timeout"
                    raise GenerationTimeout(
                        f"generation passed the server's limit of {self.state.request_timeout:g} s")
                if self.durable and self.admission.needs_progress(self.completion_tokens):
                    self.state.meter.progress(self.admission, self.completion_tokens, self.cached_tokens)
                yield delta
        except GenerationTimeout:
            self.finish_reason = "timeout"
            raise
        except Exception:
            # Engine faults and bugs alike; a disconnect (cancellation) stays "aborted".
            status = "error"
            self.finish_reason = "error"
            raise
        finally:
            # Shielded: on a client disconnect this runs inside a cancelled scope.
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self.settle(status)

    def settle_if_open(self, status: Status) -> None:
        """Settle now unless `deltas` already did (it settles on every path it runs)."""
        if not self.admission.settled:
            self.settle(status)

    def settle(self, status: Status) -> None:
        now = time.monotonic()
        self.state.meter.settle(
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
                billable=self.durable or status in ("ok", "aborted"),
            ),
        )

    def usage(self) -> dict:
        prompt = len(self.prompt_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def start_chat(
    state: AppState, principal: Principal, request: ChatRequest, request_id: str, arrived: float
) -> ChatRun:
    """Build the prompt and admit the request; raises `ApiError` when it cannot run."""
    engine = state.registry.get(request.model)
    if engine is None:
        raise ApiError("model_not_found", f"The model {request.model!r} does not exist.", param="model")
    info = engine.info
    try:
        prompt = render_chat(
            info.chat_template or "",
            request.messages,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            tools=request.tools,
        )
    except ChatTemplateError as exc:
        raise ApiError("invalid_request", f"Invalid messages: {exc}", param="messages") from None
    prompt_ids = tuple(engine.tokenize(prompt))
    room = info.context_length - len(prompt_ids)
    if room < 1:
        raise ApiError(
            "prompt_too_long",
            f"The prompt has {len(prompt_ids)} tokens; {request.model} takes at most "
            f"{info.context_length - 1} prompt tokens.",
            param="messages",
        )
    max_tokens = min(request.max_tokens or DEFAULT_MAX_TOKENS, room)
    try:
        admission = state.meter.admit(principal, request.model, request_id, len(prompt_ids), max_tokens)
    except PlatformError as exc:
        raise from_platform(exc) from None
    return ChatRun(state, engine, request, request_id, admission, prompt_ids, max_tokens, arrived,
                   durable=request.stream, deadline=arrived + state.request_timeout)


async def complete(run: ChatRun, dialect: Dialect) -> dict:
    """The whole reply as one response body."""
    pieces: list[str] = []
    try:
        async for delta in run.deltas():
            pieces.append(delta.text)
    except PromptTooLong as exc:
        raise ApiError("prompt_too_long", str(exc), param="messages") from None
    except EngineError as exc:
        raise ApiError("engine_error", f"The model failed: {exc}") from None
    body = {
        "id": _completion_id(run, dialect),
        "request_id": run.request_id,
        "object": "chat.completion",
        "created": run.created,
        "model": run.request.model,
        "choices": [
            {
                "index": 0,
                "finish_reason": run.finish_reason,
                "message": {"role": "assistant", "content": "".join(pieces)},
            }
        ],
        "usage": run.usage(),
    }
    return body


async def stream(run: ChatRun, dialect: Dialect) -> AsyncIterator[bytes]:
    """The reply as SSE `data:` lines, ending with the finish chunk (with usage) and [DONE]."""
    chunk_id = _completion_id(run, dialect)

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
        body: dict = {
            "id": chunk_id,
            "request_id": run.request_id,
            "object": "chat.completion.chunk",
            "created": run.created,
            "model": run.request.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            body["usage"] = usage
        return _sse(body)

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for delta in run.deltas():
            if delta.text:
                yield chunk({"content": delta.text})
    except EngineError as exc:
        # Headers are gone: report in-band (Zhipu: finish_reason network_error; OpenAI: an
        # error event, which its SDK raises as APIError).
        if dialect is Dialect.ZHIPU:
            yield chunk({}, "network_error", run.usage())
        else:
            yield _sse(error_body(ApiError("engine_error", f"The model failed: {exc}"), dialect))
        yield b"data: [DONE]\n\n"
        return
    usage = run.usage() if run.request.include_usage else None
    yield chunk({}, run.finish_reason, usage)
    yield b"data: [DONE]\n\n"


def rate_limit_headers(run: ChatRun) -> dict[str, str]:
    """`x-ratelimit-*` of the key's limits, as OpenAI sends them."""
    left = run.admission.grant.remaining
    headers: dict[str, str] = {}
    if left is not None and left.limit_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(left.limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(left.requests)
    if left is not None and left.limit_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(left.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(left.tokens)
    return headers


def _completion_id(run: ChatRun, dialect: Dialect) -> str:
    return run.request_id if dialect is Dialect.ZHIPU else f"chatcmpl-{run.request_id}"


def _sse(body: dict) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
