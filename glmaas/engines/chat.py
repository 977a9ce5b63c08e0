"""Chat engines: a whole chat in, deltas out.

A local engine speaks token ids (`engines/base.py`): the layers above render the chat template
and tokenize. An engine that fronts another server (an upstream: vLLM, SGLang, llama.cpp's
server, another MaaS) cannot: its tokenizer and template live on the other side, and it is
asked in text. So a `ChatEngine` takes a `ChatCall` (the messages, tools, response format and
sampling fields of the canonical request, dialect-free) and yields `ChatDelta`s: a `Delta` that
also carries reasoning and tool-call pieces, counts the tokens it stands for as an estimate, and
ends with the engine's `Usage` (the upstream's own, or an estimate flagged `estimated`).

The metered run reads both kinds of delta the same way (`token_count`, `usage`,
`finish_reason`); cancellation is the same too: closing the iterator stops the engine at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from glmaas.engines.base import Delta, ModelInfo
from glmaas.engines.tool_calls import ToolCall


@dataclass(frozen=True)
class ChatCall:
    """A chat request as an engine that speaks text receives it. Messages and tools are in the
    OpenAI wire form, which every dialect maps onto; `sampling` holds only the sampling fields
    the client set (temperature, top_p, seed, stop, penalties...), by their OpenAI names."""

    request_id: str
    messages: list[dict[str, Any]]
    max_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: int | None = None  # None: none; else how many alternatives beside each token
    thinking: bool | None = None  # reasoning on/off where the model has the switch; None: its default
    user: str | None = None
    tenant: str | None = None  # the account asking: an upstream may keep its prefix cache apart per tenant
    stream: bool = True  # False: the client waits for the whole reply, so an upstream is asked for it whole


@dataclass(frozen=True)
class TextCall:
    """A legacy completion (OpenAI's `/completions`) as an engine that speaks text receives it:
    one prompt (text or token ids of the upstream's own vocabulary); `sampling` holds only the
    sampling fields the client set, by their OpenAI names."""

    request_id: str
    prompt: str | list[int]
    max_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = None
    user: str | None = None
    stream: bool = True


@dataclass(frozen=True)
class ToolCallPiece:
    """A piece of a tool call, as streams send them: the first piece of call `index` has its
    id and function name; arguments arrive as text, possibly over several pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ChatDelta(Delta):
    """A step of a chat engine's output. `tokens` is how many tokens it stands for, by our own
    count (the upstream's usage, on the last delta, replaces the sum)."""

    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # whole calls
    tokens: int = 0

    exact_count: ClassVar[bool] = False

    @property
    def token_count(self) -> int:
        return self.tokens


@runtime_checkable
class ChatEngine(Protocol):
    """A model asked in messages; see the module docstring."""

    info: ModelInfo

    def count_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
        """Our estimate of the prompt's tokens: what admission holds for and what is billed
        when the engine reports no usage."""
        ...

    def chat(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        """Stream the reply; the last delta has `finish_reason` and `usage` set. Raises
        `InvalidRequest` when the request is refused as invalid, `EngineError` on a fault."""
        ...

    async def start(self) -> None:
        """Start background work (health checks); called once the event loop runs."""
        ...

    async def close(self) -> None:
        """Close connections and stop background work."""
        ...


_ASKS_IN_MESSAGES: dict[type, bool] = {}


def asks_in_messages(engine: object) -> bool:
    """Whether `engine` is a `ChatEngine`. A runtime protocol check walks the protocol's members
    on every call; the answer is the same for every engine of a class, so it is worked out once."""
    kind = type(engine)
    known = _ASKS_IN_MESSAGES.get(kind)
    if known is None:
        known = _ASKS_IN_MESSAGES[kind] = isinstance(engine, ChatEngine)
    return known


@runtime_checkable
class TextEngine(Protocol):
    """A chat engine that also serves legacy completions (an OpenAI-compatible upstream's
    `/completions`)."""

    def serves_completions(self) -> bool:
        """Whether the servers behind it have legacy completions at all."""
        ...

    def count_text(self, prompt: str | list[int]) -> int:
        """Our estimate of a prompt's tokens (token ids count as themselves)."""
        ...

    def complete(self, call: TextCall) -> AsyncIterator[ChatDelta]:
        """Stream the completion; the last delta has `finish_reason` and `usage` set. Raises
        `InvalidRequest` when refused as invalid, `EngineError` on a fault."""
        ...
