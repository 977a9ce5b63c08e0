"""What a chat request's tools and thinking switch ask of the model: the constraint that
guarantees a required call, the parser that reads calls and reasoning out of the reply, and the
template's thinking switch."""

from __future__ import annotations

from typing import Any

from glmaas.api.chat.protocol import ChatRequest
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.engines.base import ModelInfo, OutputConstraint
from glmaas.engines.chat_output import ChatOutputParser
from glmaas.engines.constrained import json_schema_constraint
from glmaas.engines.reasoning import (
    ReasoningSplitter,
    has_thinking_switch,
    model_thinks,
    prompt_opens_reasoning,
)
from glmaas.engines.tool_calls import FunctionSpec, ToolCallParser
from glmaas.engines.tool_formats import (
    FALLBACK_PARSER,
    TOOL_PARSERS,
    ConstrainedCallParser,
    detect_tool_parser,
)


def forced_functions(chat: ChatRequest) -> tuple[FunctionSpec, ...]:
    """The functions one of which the reply must call: the named one, or any with `required`."""
    if chat.tool_choice == "named":
        return tuple(f for f in chat.functions if f.name == chat.named_tool)
    if chat.tool_choice == "required":
        return chat.functions
    return ()


def call_schema(function: FunctionSpec) -> dict[str, Any]:
    """The JSON schema of one call of `function`, as a constrained reply writes it."""
    parameters = dict(function.parameters) or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_constraint(chat: ChatRequest) -> OutputConstraint | None:
    """The grammar that makes a required or named call well formed, or None when the model is
    free to answer in text. The reply is then `{"name": …, "arguments": {…}}` whatever the model's
    own format: JSON-schema constraints are what every grammar engine implements alike."""
    functions = forced_functions(chat)
    if not functions:
        return None
    schemas = [call_schema(f) for f in functions]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return json_schema_constraint(schema)


def prompt_tools(chat: ChatRequest) -> list[dict[str, Any]] | None:
    """The tools the prompt offers: none when `tool_choice` is `none`, the named one alone when
    one is named."""
    if not chat.tools or chat.tool_choice == "none":
        return None
    if chat.tool_choice == "named":
        return [t for t in chat.tools if t["function"]["name"] == chat.named_tool]
    return chat.tools


def template_switches(info: ModelInfo, chat: ChatRequest) -> dict[str, Any]:
    """The template variables the request sets: `enable_thinking` where the template has that
    switch, `clear_thinking` where it has that one. Asking for what the model cannot do (thinking
    on a model that does not think, off on one that always does, keeping past reasoning on one
    that cannot) is a 400."""
    template = info.chat_template or ""
    switches: dict[str, Any] = {}
    if chat.thinking is not None:
        if has_thinking_switch(template):
            switches["enable_thinking"] = chat.thinking
        elif chat.thinking != model_thinks(template):
            wish = "thinking" if chat.thinking else "turning thinking off"
            raise ApiError(ErrorKind.INVALID_REQUEST,
                           f"The model {info.model_id!r} does not support {wish} ({chat.thinking_param}).",
                           param=chat.thinking_param)
    if chat.clear_thinking is not None:
        if "clear_thinking" not in template:
            raise ApiError(ErrorKind.INVALID_REQUEST,
                           f"The model {info.model_id!r} has no thinking.clear_thinking switch.",
                           param="thinking.clear_thinking")
        switches["clear_thinking"] = chat.clear_thinking
    return switches


def _tool_parser(info: ModelInfo, chat: ChatRequest) -> ToolCallParser | None:
    if not chat.functions or chat.tool_choice == "none":
        return None
    if forced_functions(chat):
        return ConstrainedCallParser(chat.functions)
    name = info.tool_parser or detect_tool_parser(info.chat_template) or FALLBACK_PARSER
    return TOOL_PARSERS[name](chat.functions)


def output_parser(info: ModelInfo, chat: ChatRequest, prompt_text: str) -> ChatOutputParser:
    """The parser of this reply: reasoning where the model thinks, tool calls where the request
    offers tools."""
    reasoning = None
    # A constrained call is JSON from its first token: there is no room for reasoning.
    if model_thinks(info.chat_template) and not forced_functions(chat):
        reasoning = ReasoningSplitter(opened=prompt_opens_reasoning(prompt_text))
    return ChatOutputParser(reasoning=reasoning, tools=_tool_parser(info, chat),
                            max_calls=None if chat.parallel_tool_calls else 1)
