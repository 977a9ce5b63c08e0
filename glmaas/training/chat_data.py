"""Conversations as supervised fine-tuning examples: token ids and the mask of the tokens trained on.

A conversation is rendered with the model's own chat template, one message at a time, so each
assistant turn's tokens are known exactly: the text the template adds for that turn after the
assistant header (`add_generation_prompt`) is its content and end-of-turn marker, and only those
tokens carry loss. System and user turns, and the headers, are context. Each piece is tokenized
on its own; the pieces meet at the template's turn markers, where the tokenizer splits anyway.

The same function counts a file's tokens when a job is created (the hold) and builds the batches
the job trains on, so what is held is what is trained.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from glmaas.model.chat_template import ChatTemplateError, render_chat

ROLES = ("system", "user", "assistant", "tool")
# A refusal names at most this many bad lines.
MAX_LINE_ERRORS = 5

Tokenize = Callable[[str], list[int]]


class InvalidTrainingFile(ValueError):
    """A training or validation file that cannot be trained on; the message names its bad lines."""


@dataclass(frozen=True)
class ChatFormat:
    """What renders a model's conversations: its chat template and special tokens, its tokenizer."""

    template: str
    tokenize: Tokenize
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
        return render_chat(self.template, messages, bos_token=self.bos_token, eos_token=self.eos_token,
                           add_generation_prompt=generation_prompt)


@dataclass(frozen=True)
class Example:
    """One conversation as the model sees it: `ids`, and `trained[i]` when token i is an
    assistant token (the model learns to predict it from the tokens before it)."""

    ids: list[int]
    trained: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


def _message_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"messages[{i}] needs a role of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content must be a string"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return "no assistant message to learn from"
    return None


def example_of(fmt: ChatFormat, messages: list[dict[str, Any]], max_len: int) -> Example:
    """The conversation as token ids with its assistant tokens marked; cut at `max_len` tokens.
    Raises `ChatTemplateError` when the template refuses the conversation or does not render it
    one turn after another."""
    ids: list[int] = []
    trained: list[bool] = []
    done = ""
    for k, message in enumerate(messages):
        turn = [{"role": m["role"], "content": m["content"]} for m in messages[: k + 1]]
        if message["role"] == "assistant":
            header = fmt.render(turn[:-1], generation_prompt=True)
            pieces = [(header, False), (fmt.render(turn, generation_prompt=False), True)]
        else:
            pieces = [(fmt.render(turn, generation_prompt=False), False)]
        for text, learn in pieces:
            if not text.startswith(done):
                raise ChatTemplateError("the chat template does not render the conversation turn by turn")
            new = fmt.tokenize(text[len(done):])
            ids += new
            trained += [learn] * len(new)
            done = text
    return Example(ids[:max_len], trained[:max_len])


def read_examples(data: bytes, fmt: ChatFormat, max_len: int, *, what: str = "training file") -> list[Example]:
    """The examples of a chat-format JSONL file (`{"messages": [...]}` per line), or
    `InvalidTrainingFile` naming up to five bad lines."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InvalidTrainingFile(f"The {what} is not UTF-8 text.") from None
    problems: list[str] = []
    examples: list[Example] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg})")
            continue
        messages = record.get("messages") if isinstance(record, dict) else None
        problem = _message_problem(messages)
        if problem is None:
            try:
                example = example_of(fmt, messages, max_len)
            except ChatTemplateError as exc:
                problem = f"the chat template refused it ({exc})"
            else:
                if not any(example.trained[1:]):
                    problem = f"no assistant token within the first {max_len} tokens"
                examples.append(example)
        if problem:
            problems.append(f"line {number}: {problem}")
    if problems:
        more = f" (and {len(problems) - MAX_LINE_ERRORS} more)" if len(problems) > MAX_LINE_ERRORS else ""
        raise InvalidTrainingFile(f"Invalid {what}: " + "; ".join(problems[:MAX_LINE_ERRORS]) + more)
    if not examples:
        raise InvalidTrainingFile(f"The {what} has no conversations.")
    return examples


def token_count(examples: Iterable[Example]) -> int:
    """Tokens one epoch trains: every token of every example (context and assistant alike)."""
    return sum(len(e) for e in examples)
