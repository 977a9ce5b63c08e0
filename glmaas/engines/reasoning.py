"""Reasoning in a model's output: the text between `<think>` and `</think>` that thinking models
write before their answer (GLM-4.5+, GLM-Z1, Qwen 3, DeepSeek-R1).

Reasoning is a prefix of the output: it opens with `<think>` as the first non-blank text (or the
prompt already opened it, as GLM-4.7's and GLM-Z1's generation prompts do) and ends at
`</think>`. Output without the opening marker is all content, as vLLM's GLM-4.5 reasoning parser
treats it. The splitter also counts the tokens spent on reasoning: every token up to and
including the one that completes `</think>` (or all of them, when the output ends inside its
reasoning), markers included.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def model_thinks(chat_template: str | None) -> bool:
    """Whether a chat template lays out reasoning (its models write `<think>` blocks)."""
    return THINK_OPEN in (chat_template or "")


def has_thinking_switch(chat_template: str | None) -> bool:
    """Whether a chat template turns thinking on and off (`enable_thinking`, as GLM-4.5+ and
    Qwen 3 templates take it)."""
    return "enable_thinking" in (chat_template or "")


def prompt_opens_reasoning(prompt: str) -> bool:
    """Whether the rendered prompt ends inside an opened `<think>` block."""
    return prompt.rstrip().endswith(THINK_OPEN)


class _State(enum.Enum):
    START = "start"  # nothing but blanks yet: reasoning may still open
    REASONING = "reasoning"
    CONTENT = "content"


@dataclass
class Split:
    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Incremental: `push(text, tokens)` for each piece of output and the number of tokens that
    made it, then `finish()`; `reasoning_tokens` counts as described in the module docstring."""

    def __init__(self, *, opened: bool = False) -> None:
        self._state = _State.REASONING if opened else _State.START
        self._buf = ""
        self._pending_tokens = 0  # tokens of blanks or a partial marker at the start
        self._strip_lead = False  # blanks right after </think> separate, they are not content
        self.reasoning_tokens = 0

    def push(self, text: str, tokens: int = 0) -> Split:
        out = Split()
        if self._state is _State.CONTENT:
            out.content = self._lead(text)
            return out
        self._buf += text
        if self._state is _State.START:
            head = self._buf.lstrip()
            if not head or THINK_OPEN.startswith(head):
                self._pending_tokens += tokens
                return out
            if not head.startswith(THINK_OPEN):
                self._state = _State.CONTENT
                out.content, self._buf = self._buf, ""
                return out
            self._state = _State.REASONING
            self._buf = head[len(THINK_OPEN):]
            tokens += self._pending_tokens
        self.reasoning_tokens += tokens
        at = self._buf.find(THINK_CLOSE)
        if at >= 0:
            out.reasoning = self._buf[:at]
            rest, self._buf = self._buf[at + len(THINK_CLOSE):], ""
            self._state = _State.CONTENT
            self._strip_lead = True
            out.content = self._lead(rest)
            return out
        keep = next((n for n in range(min(len(THINK_CLOSE) - 1, len(self._buf)), 0, -1)
                     if self._buf.endswith(THINK_CLOSE[:n])), 0)
        out.reasoning = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep:]
        return out

    def _lead(self, text: str) -> str:
        if self._strip_lead:
            text = text.lstrip()
            self._strip_lead = not text
        return text

    def finish(self) -> Split:
        held, self._buf = self._buf, ""
        if self._state is _State.REASONING:
            return Split(reasoning=held)
        return Split(content=held)
