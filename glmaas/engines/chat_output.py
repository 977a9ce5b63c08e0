"""A chat reply's structure, read from the text an engine generates: reasoning first, then
content and tool calls. Engine-agnostic: a local engine's text goes through `ChatOutputParser`; an
upstream engine that already returns structure yields the same `ChatPiece`s."""

from __future__ import annotations

from dataclasses import dataclass, field

from glmaas.engines.reasoning import ReasoningSplitter
from glmaas.engines.tool_calls import ParsedOutput, ToolCall, ToolCallParser


@dataclass
class ChatPiece:
    """What a step of output adds to the reply."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def extend(self, other: ChatPiece) -> None:
        """Append what `other` adds (to gather a whole reply from its pieces)."""
        self.reasoning += other.reasoning
        self.content += other.content
        self.tool_calls.extend(other.tool_calls)


class ChatOutputParser:
    """Incremental: `push` each delta's text with its token count, then `finish` once.

    `reasoning`: a splitter when the model thinks; `tools`: a tool-call parser when the request
    declared tools (and did not turn them off); `max_calls`: 1 when parallel calls are off (the
    first call is kept)."""

    def __init__(self, *, reasoning: ReasoningSplitter | None = None, tools: ToolCallParser | None = None,
                 max_calls: int | None = None) -> None:
        self._reasoning = reasoning
        self._tools = tools
        self._max_calls = max_calls
        self.calls = 0
        self._reported: int | None = None

    @property
    def reasoning_tokens(self) -> int:
        if self._reported is not None:
            return self._reported
        return self._reasoning.reasoning_tokens if self._reasoning else 0

    def report_reasoning_tokens(self, tokens: int) -> None:
        """The reasoning tokens an engine that structures its own reply counted (an upstream's
        usage): they are what the client is told."""
        self._reported = tokens

    def push(self, text: str, tokens: int = 0) -> ChatPiece:
        if self._reasoning is None:
            return self._content(text, final=False)
        split = self._reasoning.push(text, tokens)
        piece = self._content(split.content, final=False)
        piece.reasoning = split.reasoning
        return piece

    def finish(self) -> ChatPiece:
        reasoning = ""
        text = ""
        if self._reasoning is not None:
            split = self._reasoning.finish()
            reasoning, text = split.reasoning, split.content
        piece = self._content(text, final=True)
        piece.reasoning = reasoning
        return piece

    def _content(self, text: str, *, final: bool) -> ChatPiece:
        if self._tools is None:
            return ChatPiece(content=text)
        parsed = self._tools.push(text) if text else ParsedOutput()
        if final:
            parsed.extend(self._tools.finish())
        calls = parsed.tool_calls
        if self._max_calls is not None:
            calls = calls[: max(0, self._max_calls - self.calls)]
        self.calls += len(calls)
        return ChatPiece(content=parsed.content, tool_calls=calls)
