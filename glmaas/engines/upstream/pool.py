"""The upstream engine: one model id served by a pool of upstream servers.

Choice: the best (lowest) priority that has an available member, and within it the member
with the fewest outstanding requests per unit of weight. Failover: a request that fails before
it has yielded anything (no connection, a 5xx, a timeout, the upstream dying before its first
output) is sent to the next member; once output has been yielded, it reached the client, and a
failure ends the stream as an engine fault. A client that does not stream gets its upstream
asked unstreamed (`Member.whole`): the whole reply, with its exact usage, read as one chunk; any
failure there comes before output, so it fails over the same way. Active health checks run every `health_interval`
seconds and re-admit an ejected member once it answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from glmaas.engines.base import EngineError, EngineLoad, EngineUnavailable, InvalidRequest, ModelInfo, Usage
from glmaas.engines.chat import ChatCall, ChatDelta, TextCall
from glmaas.engines.upstream.config import UpstreamConfig
from glmaas.engines.upstream.member import CHAT_PATH, Member, Refused, Unavailable
from glmaas.engines.upstream.tokens import TokenCounter
from glmaas.engines.upstream.wire import ToolCallAssembler, UpstreamFault, read_chunk, text_request_body

log = logging.getLogger("glmaas.upstream")


class UpstreamEngine:
    """A `ChatEngine` in front of one or more upstream servers; see the module docstring."""

    def __init__(self, model_id: str, configs: list[UpstreamConfig],
                 stored_keys: Callable[[str], str | None] | None = None) -> None:
        # `stored_keys` opens the sealed keys that specs name with `key_secret=`.
        self.members = [Member(c, stored_keys=stored_keys) for c in configs]
        tokenizer = next((c.tokenizer for c in configs if c.tokenizer), None)
        self.counter = TokenCounter(tokenizer)
        self._exact_pieces = tokenizer is not None
        self.info = ModelInfo(model_id=model_id, context_length=min(c.context_length for c in configs),
                              chat_template=None)
        self._health: asyncio.Task[None] | None = None

    def load(self) -> EngineLoad:
        """Requests in flight to the members (an upstream's own slots are its own business)."""
        return EngineLoad(busy=sum(m.outstanding for m in self.members), waiting=0)

    def count_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
        return self.counter.messages(messages, tools)

    def choose(self, tried: list[Member]) -> Member | None:
        """The member to send the next attempt to, or None when none is left."""
        candidates = [m for m in self.members if m not in tried and m.available()]
        if not candidates:
            return None
        best = min(m.config.priority for m in candidates)
        level = [m for m in candidates if m.config.priority == best]
        return min(level, key=lambda m: (m.outstanding + 1) / m.config.weight)

    def count_text(self, prompt: str | list[int]) -> int:
        return len(prompt) if isinstance(prompt, list) else self.counter.text(prompt)

    def chat(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        return self._ask(lambda member: member.body(call, self.info.model_id), CHAT_PATH, call.stream,
                         lambda: self.count_prompt(call.messages, call.tools))

    def serves_completions(self) -> bool:
        """Whether every member has legacy completions: OpenAI-compatible servers do; the Zhipu
        API has no such resource."""
        return all(m.config.dialect == "openai" for m in self.members)

    def complete(self, call: TextCall) -> AsyncIterator[ChatDelta]:
        """A legacy completion, from the upstreams' `/completions`."""
        return self._ask(lambda member: text_request_body(member.config, call, self.info.model_id), "/completions",
                         call.stream, lambda: self.count_text(call.prompt))

    async def _ask(self, body_for: Callable[[Member], dict[str, Any]], path: str, stream: bool,
                   estimate_prompt: Callable[[], int]) -> AsyncIterator[ChatDelta]:
        """The reply of the first member that answers (see the module docstring's failover)."""
        tried: list[Member] = []
        while (member := self.choose(tried)) is not None:
            tried.append(member)
            yielded = False
            member.outstanding += 1
            body = body_for(member)
            chunks = member.stream(body, path) if stream else member.whole(body, path)
            try:
                async for delta in self._relay(chunks, stream, estimate_prompt):
                    yielded = True
                    yield delta
                member.succeeded()
                return
            except Unavailable as exc:
                log.warning("upstream unavailable for %s, trying another: %s", self.info.model_id, exc)
            except Refused as exc:
                member.succeeded()  # it answered: the request was at fault, not the server
                raise InvalidRequest(f"The upstream refused the request: {exc}") from None
            except (httpx.HTTPError, TimeoutError, UpstreamFault) as exc:
                member.failed(eject=isinstance(exc, httpx.TransportError))
                log.warning("upstream %s failed (%s)", member.config.describe(), type(exc).__name__)
                if yielded:
                    raise EngineError("the upstream failed mid-stream") from None
            finally:
                member.outstanding -= 1
                await chunks.aclose()
        raise EngineUnavailable(f"no upstream of {self.info.model_id} is available",
                                retry_after_s=min(m.retry_in() for m in self.members))

    async def _relay(self, chunks: AsyncIterator[dict], stream: bool,
                     estimate_prompt: Callable[[], int]) -> AsyncIterator[ChatDelta]:
        """The upstream's chunks as deltas, then the last delta with the finish reason and the
        usage: the upstream's, or our estimate when it sent none. Tool calls are passed on whole,
        once the stream has ended (their pieces are counted as they come)."""
        usage: Usage | None = None
        finish: str | None = None
        produced = reasoned = 0
        calls = ToolCallAssembler()
        async for raw in self._until_cut(chunks, lambda: finish is not None):
            chunk = read_chunk(raw)
            usage = chunk.usage or usage
            finish = chunk.finish_reason or finish
            for piece in chunk.tool_pieces:
                calls.push(piece)
            arguments = "".join(p.arguments for p in chunk.tool_pieces)
            if chunk.delta is not None or chunk.tool_pieces:
                delta = chunk.delta or ChatDelta()
                tokens = self._count(delta.text + delta.reasoning + arguments, whole=not stream)
                produced += tokens
                if delta.reasoning:
                    reasoned += tokens if not (delta.text or arguments) else self._count(delta.reasoning, whole=True)
                yield ChatDelta(text=delta.text, reasoning=delta.reasoning, logprobs=delta.logprobs, tokens=tokens)
        if finish is None:
            raise UpstreamFault("the upstream's stream ended without a finish reason")
        if whole := calls.calls():
            yield ChatDelta(tool_calls=whole)
        if usage is None:
            usage = Usage(estimate_prompt(), produced, estimated=True,
                          reasoning_tokens=min(reasoned, produced))
        yield ChatDelta(finish_reason=finish if finish in ("stop", "length", "tool_calls") else "stop",  # type: ignore[arg-type]
                        usage=usage)

    @staticmethod
    async def _until_cut(chunks: AsyncIterator[dict], finished: Callable[[], bool]) -> AsyncIterator[dict]:
        """The chunks; a connection cut after the finish reason (before the usage chunk, say)
        ends them quietly, since the reply itself was whole."""
        try:
            async for chunk in chunks:
                yield chunk
        except (httpx.HTTPError, TimeoutError):
            if not finished():
                raise

    def _count(self, text: str, *, whole: bool = False) -> int:
        if not self._exact_pieces and not whole:
            return 1  # streaming servers send about one token per chunk
        return max(1, self.counter.text(text))

    async def start(self) -> None:
        if self._health is None:
            self._health = asyncio.create_task(self._check_health())

    async def _check_health(self) -> None:
        interval = min(m.config.health_interval for m in self.members)
        while True:
            await asyncio.sleep(interval)
            results = await asyncio.gather(*(m.check() for m in self.members), return_exceptions=True)
            for member, ok in zip(self.members, results, strict=True):
                if ok is not True:
                    log.warning("upstream %s failed its health check", member.config.describe())

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
        for member in self.members:
            await member.close()

    # A chat engine has no token ids of its own; these satisfy the `Engine` protocol's shape.

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        raise EngineError("an upstream model takes messages, not token ids")

    def detokenize(self, token_ids: list[int]) -> str:
        raise EngineError("an upstream model takes messages, not token ids")
