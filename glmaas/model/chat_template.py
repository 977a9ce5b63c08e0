"""Rendering a model's chat template (the Jinja template shipped in its GGUF or tokenizer config)
into the prompt text, in a sandbox, as Hugging Face's `apply_chat_template` does."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template refused the conversation (e.g. roles out of order)."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


@lru_cache(maxsize=32)
def _compile(source: str):  # type: ignore[no-untyped-def]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages`, ending with the assistant's turn header."""
    try:
        return _compile(template).render(
            messages=messages,
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from None
