"""Tools on the embedded default model (SmolLM2-135M-Instruct in llama.cpp, in process): its
template knows no tools, so they reach it in the Hermes form; a named call is decoded under the
call's JSON schema and comes back as a call whose arguments validate against it."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from glmaas.engines.registry import DEFAULT_MODEL_ID, default_model_path
from tests.inprocess import AppServer

MODEL = DEFAULT_MODEL_ID
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "web_search", "description": "Search the web.",
                                      "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                     "required": ["query"]}}},
]
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    server = AppServer(tmp_path_factory.mktemp("default-tools"), "--no-default-model",
                       "--model", f"{MODEL}=llamacpp:{default_model_path()},slots=2,ctx=1024")
    yield openai.OpenAI(api_key=server.create_key(), base_url=server.openai_url, http_client=server.client(),
                        max_retries=0)
    server.stop()


def test_tools_on_a_template_without_tools_answer_without_fault(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=24, temperature=0)
    choice = resp.choices[0]
    # A model this small may answer or call; either way the reply is well formed.
    assert choice.finish_reason in {"stop", "length", "tool_calls"}
    assert choice.message.content or choice.message.tool_calls
    for call in choice.message.tool_calls or []:
        assert call.function.name in {"get_weather", "web_search"}
        json.loads(call.function.arguments)


def test_named_call_validates_against_its_schema(client: openai.OpenAI) -> None:
    """Streamed, so the stream's accumulation is checked too; the plain path is the next test's."""
    with client.chat.completions.stream(
            model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, seed=7,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}) as events:
        resp = events.get_final_completion()
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_required_call_names_a_declared_function(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, seed=3,
                                          tool_choice="required")
    assert resp.choices[0].finish_reason == "tool_calls"
    [call] = resp.choices[0].message.tool_calls
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    assert call.function.name in declared, call.function.name
    jsonschema.validate(json.loads(call.function.arguments), declared[call.function.name])
