"""Tool calls in a model's output: the engine-agnostic types, and the incremental parser that
turns generated text into content and structured calls as it streams.

A model writes its calls in its family's own format (`engines/tool_formats.py`). Formats come in
two shapes, and one streaming parser serves each:

- *tagged*: calls sit between markers anywhere in the output (`<tool_call>…</tool_call>` of
  GLM-4.5+ and Hermes/Qwen); text outside the markers is content;
- *whole output*: the output is either a call from its first character or plain content
  (Llama 3 JSON, the GLM-4 `name\\n{json}` form, and the JSON a constrained call is decoded as).

Text that does not parse as a call is never dropped and never an error: it stays content.
An upstream engine that already returns structured calls yields the same `ToolCall`s.
"""

from __future__ import annotations

import abc
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A call of a declared function. `arguments` is JSON text of an object, as both wire
    dialects carry it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + secrets.token_hex(12))


@dataclass(frozen=True)
class FunctionSpec:
    """What a parser needs to know of a declared function: its name and its parameters' schema
    (some formats write every argument as text and need the schema to type it)."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def argument_type(self, key: str) -> str | None:
        prop = (self.parameters.get("properties") or {}).get(key)
        return prop.get("type") if isinstance(prop, dict) else None


@dataclass
class ParsedOutput:
    """What a piece of output turned into."""

    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def extend(self, other: ParsedOutput) -> None:
        self.content += other.content
        self.tool_calls.extend(other.tool_calls)


def arguments_json(arguments: Any) -> str | None:
    """`arguments` as the JSON text of an object, or None when it is not an object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return json.dumps(arguments, ensure_ascii=False)


class ToolCallParser(abc.ABC):
    """Incremental: `push` each piece of generated text, then `finish` once."""

    def __init__(self, functions: tuple[FunctionSpec, ...]) -> None:
        self.functions = {f.name: f for f in functions}

    @abc.abstractmethod
    def push(self, text: str) -> ParsedOutput:
        """What `text` (appended to what came before) makes certain so far."""

    @abc.abstractmethod
    def finish(self) -> ParsedOutput:
        """Whatever is still held back, once the output has ended."""

    def parse(self, text: str) -> ParsedOutput:
        """A whole output at once."""
        out = self.push(text)
        out.extend(self.finish())
        return out


def _partial_suffix(buf: str, marker: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:n]):
            return n
    return 0


class TaggedParser(ToolCallParser):
    """Calls between `start` and `end` markers; each region is parsed by `parse_region`, which
    returns None when the region is malformed (it then stays content).

    Whitespace around calls and at the end of the output is dropped; other content is passed
    through as soon as it cannot be the start of a marker."""

    start: str
    end: str

    def __init__(self, functions: tuple[FunctionSpec, ...]) -> None:
        super().__init__(functions)
        self._buf = ""
        self._in_call = False
        self._held_space = ""  # trailing whitespace of content, dropped if a call follows
        self._after_call = False  # leading whitespace after a call is dropped too
        self._space_before_call = ""  # given back if the call turns out malformed

    @abc.abstractmethod
    def parse_region(self, body: str) -> list[ToolCall] | None:
        """The calls written between one pair of markers (`body` excludes the markers)."""

    def push(self, text: str) -> ParsedOutput:
        out = ParsedOutput()
        self._buf += text
        while True:
            if self._in_call:
                at = self._buf.find(self.end)
                if at < 0:
                    return out
                region, self._buf = self._buf[: at + len(self.end)], self._buf[at + len(self.end):]
                self._in_call = False
                calls = self.parse_region(region[len(self.start): -len(self.end)])
                if calls is None:
                    out.content += self._emit(self._space_before_call + region)
                else:
                    out.tool_calls.extend(calls)
                    self._after_call = True
                continue
            at = self._buf.find(self.start)
            if at >= 0:
                out.content += self._emit(self._buf[:at])
                self._space_before_call, self._held_space = self._held_space, ""
                self._buf = self._buf[at:]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buf, self.start)
            out.content += self._emit(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return out

    def _emit(self, text: str) -> str:
        """`text` as content, holding trailing whitespace back until more content comes."""
        if self._after_call:
            text = text.lstrip()
            self._after_call = not text
        stripped = text.rstrip()
        if not stripped:
            self._held_space += text
            return ""
        released = self._held_space + stripped
        self._held_space = text[len(stripped):]
        return released

    def finish(self) -> ParsedOutput:
        # An unclosed call (the output was cut) is not a call: it stays content. Trailing
        # whitespace of the output is dropped.
        rest, self._buf = (self._space_before_call if self._in_call else "") + self._buf, ""
        return ParsedOutput(content=self._emit(rest).rstrip() if rest.strip() else "")


class WholeOutputParser(ToolCallParser):
    """The output is a call from its first non-blank character, or plain content.
    `looks_like_call(head)` decides from the first characters (None: not yet known), and
    `parse_output` parses the whole output at the end (None: malformed, so content)."""

    def __init__(self, functions: tuple[FunctionSpec, ...]) -> None:
        super().__init__(functions)
        self._buf = ""
        self._decided: bool | None = None

    @abc.abstractmethod
    def looks_like_call(self, head: str) -> bool | None: ...

    @abc.abstractmethod
    def parse_output(self, text: str) -> list[ToolCall] | None: ...

    def push(self, text: str) -> ParsedOutput:
        if self._decided is False:
            return ParsedOutput(content=text)
        self._buf += text
        if self._decided is None:
            head = self._buf.lstrip()
            self._decided = self.looks_like_call(head) if head else None
            if self._decided is False:
                # Blanks before the first word belong to the format (GLM-4's empty name line).
                content, self._buf = self._buf.lstrip(), ""
                return ParsedOutput(content=content)
        return ParsedOutput()

    def finish(self) -> ParsedOutput:
        text, self._buf = self._buf, ""
        if self._decided is False or not text:
            return ParsedOutput()
        calls = self.parse_output(text)
        return ParsedOutput(content=text) if calls is None else ParsedOutput(tool_calls=calls)


ParserFactory = Callable[[tuple[FunctionSpec, ...]], ToolCallParser]
