"""Rendering a model's chat template (the Jinja template shipped in its GGUF or tokenizer config)
into the prompt text, in a sandbox, as Hugging Face's `apply_chat_template` does.

Messages are in Hugging Face's form: an assistant turn's `tool_calls` carry
`{"type": "function", "function": {"name", "arguments": {…}}}` with the arguments as a mapping,
a tool result is a `tool` turn. A template that lays out no tools of its own (SmolLM2's, for
one) gets them as a system message in the Hermes format instead, and its history of calls and
results written in that format, so every model can be offered tools.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


TOOLS_SYSTEM_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def takes_tools(template: str) -> bool:
    """Whether a template lays out the `tools` it is given."""
    return "tools" in template


def tools_as_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`messages` for a template that knows no tools: the tools described in the system message,
    calls and results written as Hermes text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            calls = "\n".join(
                "<tool_call>\n" + json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                             ensure_ascii=False) + "\n</tool_call>"
                for c in message["tool_calls"])
            text = (message.get("content") or "").strip()
            out.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        elif message["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
        else:
            out.append(message)
    if tools:
        prompt = TOOLS_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    switches: Mapping[str, Any] | None = None,
) -> str:
    """The prompt text for `messages`, ending with the assistant's turn header. `switches` are
    the template's own variables (`enable_thinking` of GLM-4.5+ and Qwen 3, `clear_thinking` of
    GLM-4.7)."""
    if not takes_tools(template):
        messages, tools = tools_as_messages(messages, tools), None
    try:
        return _compile(template).render(
            messages=messages,
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            **(switches or {}),
        )
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError) as exc:  # TypeError: e.g. a string added to a mapping
        raise ChatTemplateError(f"the chat template failed: {exc}") from None
