"""Each tool-call format on text written the way its model family writes it (following the
families' published chat templates and parsing guides), whole and streamed in arbitrary pieces,
including malformed and cut-off output, which stays content."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glmaas.engines.tool_calls import FunctionSpec, ParsedOutput
from glmaas.engines.tool_formats import TOOL_PARSERS, detect_tool_parser

WEATHER = FunctionSpec("get_weather", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"type": "string"}},
})
SEARCH = FunctionSpec("web_search", {"type": "object", "properties": {"query": {"type": "string"}}})
FUNCTIONS = (WEATHER, SEARCH)

# (parser, model output, expected content, expected calls as (name, arguments))
CASES = [
    # GLM-4.5/4.6: content, then calls with one <arg_key>/<arg_value> pair per line.
    ("glm45",
     "I'll look that up.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n"
     "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
     "I'll look that up.", [("get_weather", {"city": "北京", "days": 3})]),
    # A string-typed value that looks like a number stays a string.
    ("glm45",
     "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>1984</arg_value>\n</tool_call>",
     "", [("get_weather", {"city": "1984"})]),
    # Two calls in one turn.
    ("glm45",
     "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>\n"
     "<tool_call>web_search\n<arg_key>query</arg_key>\n<arg_value>Paris events</arg_value>\n</tool_call>",
     "", [("get_weather", {"city": "Paris"}), ("web_search", {"query": "Paris events"})]),
    # GLM-4.7: no newlines, and a call may have no arguments.
    ("glm47",
     "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value><arg_key>days</arg_key>"
     "<arg_value>2</arg_value></tool_call><tool_call>web_search</tool_call>",
     "", [("get_weather", {"city": "Oslo", "days": 2}), ("web_search", {})]),
    # Malformed: a name with a space, and stray text among the arguments: both stay content.
    ("glm45",
     "Try <tool_call>get weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call> "
     "or <tool_call>get_weather\nnonsense</tool_call>",
     "Try <tool_call>get weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call> "
     "or <tool_call>get_weather\nnonsense</tool_call>", []),
    # Cut off by max_tokens inside a call: content, not a half call.
    ("glm45",
     "Sure.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_val",
     "Sure.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_val", []),
    # Plain text without any call.
    ("glm45", "The weather is fine, 天气很好.", "The weather is fine, 天气很好.", []),
    # GLM-4-9B-chat / GLM-4-0414: the whole turn is `name\n{json}`.
    ("glm4", 'get_weather\n{"city": "Beijing", "days": 1}', "", [("get_weather", {"city": "Beijing", "days": 1})]),
    # A plain GLM-4 answer starts with the empty metadata line.
    ("glm4", "\nBeijing is sunny today.", "Beijing is sunny today.", []),
    # Not a declared function: content.
    ("glm4", 'get_time\n{"zone": "UTC"}', 'get_time\n{"zone": "UTC"}', []),
    # A declared name with broken JSON: content.
    ("glm4", 'get_weather\n{"city": "Beij', 'get_weather\n{"city": "Beij', []),
    # Hermes / Qwen 2.5: JSON inside <tool_call> tags, one per call.
    ("hermes",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "San Francisco, CA", "units": "celsius"}}\n'
     '</tool_call>\n<tool_call>\n{"name": "web_search", "arguments": {"query": "fog"}}\n</tool_call>',
     "", [("get_weather", {"city": "San Francisco, CA", "units": "celsius"}), ("web_search", {"query": "fog"})]),
    ("hermes",
     'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call>',
     "Let me check.", [("get_weather", {"city": "Lima"})]),
    # Bad JSON inside the tags: content.
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>', []),
    # Arguments written as a JSON string are accepted.
    ("qwen", '<tool_call>{"name": "web_search", "arguments": "{\\"query\\": \\"tea\\"}"}</tool_call>',
     "", [("web_search", {"query": "tea"})]),
    # Llama 3.1: a JSON object with "parameters" as the whole turn, optionally after <|python_tag|>.
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "days": 5}}',
     "", [("get_weather", {"city": "Paris", "days": 5})]),
    ("llama3_json",
     '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}; '
     '{"name": "web_search", "parameters": {"query": "Rome"}}',
     "", [("get_weather", {"city": "Rome"}), ("web_search", {"query": "Rome"})]),
    # JSON that is not a call, and a plain answer: content.
    ("llama3_json", '{"temperature": 21}', '{"temperature": 21}', []),
    ("llama3_json", "It is 21 degrees in Paris.", "It is 21 degrees in Paris.", []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Par',
     '{"name": "get_weather", "parameters": {"city": "Par', []),
    # What a constrained call (tool_choice required or named) is decoded as.
    ("json", '{"name": "get_weather", "arguments": {"city": "Kyiv"}}', "", [("get_weather", {"city": "Kyiv"})]),
    ("json", '{"name": "get_weather", "argum', '{"name": "get_weather", "argum', []),
]


def _calls(out: ParsedOutput) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in out.tool_calls]


@pytest.mark.parametrize("name, text, content, calls", CASES)
def test_whole_output(name: str, text: str, content: str, calls: list) -> None:
    out = TOOL_PARSERS[name](FUNCTIONS).parse(text)
    assert out.content == content
    assert _calls(out) == calls
    for call in out.tool_calls:
        assert call.id.startswith("call_") and isinstance(call.arguments, str)


def _streamed(name: str, text: str, cuts: list[int]) -> ParsedOutput:
    parser = TOOL_PARSERS[name](FUNCTIONS)
    out = ParsedOutput()
    bounds = [0, *sorted(set(c % (len(text) + 1) for c in cuts)), len(text)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        out.extend(parser.push(text[a:b]))
    out.extend(parser.finish())
    return out


@pytest.mark.parametrize("name, text, content, calls", CASES)
def test_streamed_one_character_at_a_time(name: str, text: str, content: str, calls: list) -> None:
    out = _streamed(name, text, list(range(len(text))))
    assert (out.content, _calls(out)) == (content, calls)


@settings(max_examples=25, deadline=None)
@given(case=st.sampled_from(CASES), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_streamed_in_any_pieces_equals_whole(case: tuple, cuts: list[int]) -> None:
    name, text, content, calls = case
    out = _streamed(name, text, cuts)
    assert (out.content, _calls(out)) == (content, calls)


def test_content_streams_before_the_call_is_complete() -> None:
    """Text before a call is released as soon as it cannot be part of the marker."""
    parser = TOOL_PARSERS["glm45"](FUNCTIONS)
    assert parser.push("Checking the weather now").content == "Checking the weather now"
    assert parser.push(" <tool_").content == ""  # might be a call: held
    first = parser.push("call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n")
    assert (first.content, first.tool_calls) == ("", [])
    done = parser.push("</tool_call>")
    assert [c.name for c in done.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("template, parser", [
    ("{% for tool in tools %}<tool_call>{{ name }}<arg_key>k</arg_key>{% endfor %}", "glm45"),
    ("{% if tools %}<tools>{{ tools }}</tools> <tool_call>{...}</tool_call>{% endif %}", "hermes"),
    ("{% if tools %}<|start_header_id|>ipython<|end_header_id|>{% endif %}", "llama3_json"),
    ("{% if item['tools'] is defined %}# 可用工具{% endif %}<|observation|>", "glm4"),
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}{% endfor %}", None),
])
def test_parser_detected_from_the_template(template: str, parser: str | None) -> None:
    assert detect_tool_parser(template) == parser


def test_tool_parser_engine_option() -> None:
    from glmaas.engines.base import EngineError
    from glmaas.engines.registry import build_engine

    assert build_engine("m", "mock:tool_parser=glm45").info.tool_parser == "glm45"
    assert build_engine("m", "mock").info.tool_parser is None
    with pytest.raises(EngineError, match="tool_parser"):
        build_engine("m", "mock:tool_parser=nope")
