"""The tool-call formats of the model families glmaas serves, and which one a model writes.

- `glm45`: GLM-4.5/4.6 `<tool_call>name\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>…</tool_call>`;
  GLM-4.7 writes the same without the newlines, and a call may have no arguments. Values are
  text; those whose schema type is not `string` are read as JSON.
- `glm4`: GLM-4-9B-chat and GLM-4-0414 write a call as the whole turn, `name\\n{json arguments}`.
- `hermes`: Hermes, Qwen 2.5/3 `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
- `llama3_json`: Llama 3.1+ `{"name": …, "parameters": {…}}` as the whole turn (after an optional
  `<|python_tag|>`), several separated by `;`.
- `json`: the `{"name": …, "arguments": {…}}` object a constrained call (`tool_choice` required
  or named) is decoded as, whatever the model's own format.
"""

from __future__ import annotations

import json
import re

from glmaas.engines.tool_calls import (
    FunctionSpec,
    ParserFactory,
    TaggedParser,
    ToolCall,
    WholeOutputParser,
    arguments_json,
)

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def _call_of(obj: object, *argument_keys: str) -> ToolCall | None:
    """A call from a decoded `{"name": …, <argument key>: {…}}` object."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if not _NAME.fullmatch(obj["name"]):
        return None
    key = next((k for k in argument_keys if k in obj), None)
    arguments = arguments_json(obj[key]) if key else "{}"
    return None if arguments is None else ToolCall(obj["name"], arguments)


class Glm45Parser(TaggedParser):
    start, end = "<tool_call>", "</tool_call>"

    def parse_region(self, body: str) -> list[ToolCall] | None:
        first_arg = body.find("<arg_key>")
        name = (body if first_arg < 0 else body[:first_arg]).strip()
        if not _NAME.fullmatch(name):
            return None
        args_text = "" if first_arg < 0 else body[first_arg:]
        if _GLM_ARG.sub("", args_text).strip():
            return None  # something besides key/value pairs: not a call we can read
        spec = self.functions.get(name, FunctionSpec(name))
        arguments = {key.strip(): self._value(spec, key.strip(), value)
                     for key, value in _GLM_ARG.findall(args_text)}
        return [ToolCall(name, json.dumps(arguments, ensure_ascii=False))]

    @staticmethod
    def _value(spec: FunctionSpec, key: str, text: str) -> object:
        if spec.argument_type(key) == "string":
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


class HermesParser(TaggedParser):
    start, end = "<tool_call>", "</tool_call>"

    def parse_region(self, body: str) -> list[ToolCall] | None:
        try:
            call = _call_of(json.loads(body), "arguments", "parameters")
        except json.JSONDecodeError:
            return None
        return None if call is None else [call]


class Glm4Parser(WholeOutputParser):
    def looks_like_call(self, head: str) -> bool | None:
        line, newline, _ = head.partition("\n")
        name = line.strip()
        if newline:
            return name in self.functions
        # The name line is not finished: wait while it could still be a declared name.
        return None if any(f.startswith(name) for f in self.functions) else False

    def parse_output(self, text: str) -> list[ToolCall] | None:
        name, _, rest = text.strip().partition("\n")
        arguments = arguments_json(rest.strip() or "{}")
        if arguments is None or name.strip() not in self.functions:
            return None
        return [ToolCall(name.strip(), arguments)]


PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser(WholeOutputParser):
    def looks_like_call(self, head: str) -> bool | None:
        if head.startswith(("{", PYTHON_TAG)):
            return True
        return None if PYTHON_TAG.startswith(head) else False

    def parse_output(self, text: str) -> list[ToolCall] | None:
        text = text.strip().removeprefix(PYTHON_TAG)
        decoder = json.JSONDecoder()
        calls: list[ToolCall] = []
        at = 0
        while True:
            while at < len(text) and (text[at].isspace() or text[at] == ";"):
                at += 1
            if at == len(text):
                return calls or None
            try:
                obj, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                return None
            call = _call_of(obj, "parameters", "arguments")
            if call is None:
                return None
            calls.append(call)


class ConstrainedCallParser(WholeOutputParser):
    def looks_like_call(self, head: str) -> bool | None:
        return head.startswith("{")

    def parse_output(self, text: str) -> list[ToolCall] | None:
        try:
            call = _call_of(json.loads(text), "arguments")
        except json.JSONDecodeError:
            return None
        return None if call is None else [call]


# The `tool_parser=` engine option names one of these.
TOOL_PARSERS: dict[str, ParserFactory] = {
    "glm45": Glm45Parser,
    "glm47": Glm45Parser,
    "glm4": Glm4Parser,
    "hermes": HermesParser,
    "qwen": HermesParser,
    "llama3_json": Llama3JsonParser,
    "json": ConstrainedCallParser,
}

# What a template that lays out no tools of its own is told to write (see model/chat_template.py).
FALLBACK_PARSER = "hermes"


def detect_tool_parser(chat_template: str | None) -> str | None:
    """The format a chat template teaches its model, or None when it knows no tools."""
    template = chat_template or ""
    if "tools" not in template:
        return None
    if "<arg_key>" in template:
        return "glm45"
    if "<tool_call>" in template:
        return "hermes"
    if PYTHON_TAG in template or "ipython" in template:
        return "llama3_json"
    if "<|observation|>" in template:
        return "glm4"
    return None
