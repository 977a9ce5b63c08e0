"""Tool calls and reasoning through both dialects, with the official SDKs and LangChain, against
the app in process. Mock engines write replies in the GLM-4.5 and Hermes formats."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
import zai
import zhipuai

from glmaas.engines.base import Delta, GenerationRequest, OutputConstraint
from glmaas.engines.mock import MockEngine
from tests.inprocess import AppServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

GLM45_TEMPLATE = (FIXTURES / "glm45.jinja").read_text()
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
SEARCH_TOOL = {"type": "function", "function": {
    "name": "web_search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]

GLM_THINK = "<think>The user wants the weather.</think>"
GLM_CALL = ("\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
            "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>")
HERMES_REPLY = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CONSTRAINED_REPLY = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
BAD_CALL = "<tool_call>\n{not json}\n</tool_call>"


class GrammarFollowingMock(MockEngine):
    """Stands for an engine that follows output constraints: its fixed reply is one the constraint
    allows. It keeps the constraint it was sent for the test to check."""

    constraint: OutputConstraint | None = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.constraint = request.sampling.constraint
        plain = dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, constraint=None))
        async for delta in super().generate(plain):
            yield delta


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    engines = (
        MockEngine("glm", chat_template=GLM45_TEMPLATE, reply=GLM_THINK + GLM_CALL),
        MockEngine("glm-chat", chat_template=GLM45_TEMPLATE, reply="<think>A greeting.</think>\nHello! 你好！"),
        MockEngine("hermes", reply=HERMES_REPLY),  # ChatML template without tools: the Hermes fallback
        GrammarFollowingMock("constrained", reply=CONSTRAINED_REPLY),
        MockEngine("plain"),
        MockEngine("two-calls", reply=HERMES_REPLY + "\n" + HERMES_REPLY.split("\n", 1)[1]),
        MockEngine("bad", reply=BAD_CALL),
        MockEngine("glm-opt", reply=GLM_CALL.strip(), tool_parser="glm45"),
    )
    server = AppServer(tmp_path_factory.mktemp("tools"), "--no-default-model", engines=engines)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(server: AppServer) -> str:
    return server.create_key("--name", "tests")


@pytest.fixture(scope="module")
def api(server: AppServer, key: str) -> httpx.Client:
    return server.client(headers={"Authorization": f"Bearer {key}"})


@pytest.fixture()
def oai(server: AppServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.openai_url, http_client=server.client(), max_retries=0)


def _engine(server: AppServer, model: str) -> MockEngine:
    engine = server.app.state.glmaas.registry.get(model)
    assert isinstance(engine, MockEngine)
    return engine


# -- OpenAI SDK ---------------------------------------------------------------------------------


def test_openai_tool_call_parsed_from_glm45_output(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="glm", messages=ASK, tools=[WEATHER_TOOL, SEARCH_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}
    assert choice.message.reasoning_content == "The user wants the weather."
    assert resp.usage.completion_tokens_details.reasoning_tokens == len(GLM_THINK.encode())


def test_openai_streamed_tool_call_accumulates(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="hermes", messages=ASK, tools=[WEATHER_TOOL], stream=True,
                                              stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Let me check."
    # Accumulate as the SDK's users do: by index, name once, arguments concatenated.
    calls: dict[int, dict] = {}
    for c in chunks:
        for part in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = slot["id"] or part.id
            slot["name"] += part.function.name or ""
            slot["arguments"] += part.function.arguments or ""
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["tool_calls"]
    # Usage in a chunk of its own, with no choices, after the finish chunk.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert finish[0].usage is None


def test_openai_stream_helper_builds_the_call(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(model="glm", messages=ASK, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris", "days": 2})


def test_tool_history_round_trips_through_the_template(oai: openai.OpenAI, server: AppServer) -> None:
    """An assistant turn with tool_calls and the tool's result reach the prompt in GLM's form."""
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city": "Paris", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
    ]
    oai.chat.completions.create(model="glm-chat", messages=messages, tools=[WEATHER_TOOL])
    engine = _engine(server, "glm-chat")
    prompt = engine.detokenize(list(engine.last_request.prompt_token_ids))
    assert ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
            "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>") in prompt
    assert '<|observation|>\n<tool_response>\n{"temp_c": 18}\n</tool_response><|assistant|>' in prompt
    assert '"name": "get_weather"' in prompt  # the tools block


def test_template_without_tools_gets_them_in_hermes_form(oai: openai.OpenAI, server: AppServer) -> None:
    messages = [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"}]
    oai.chat.completions.create(model="plain", messages=messages, tools=[WEATHER_TOOL])
    engine = _engine(server, "plain")
    prompt = engine.detokenize(list(engine.last_request.prompt_token_ids))
    assert "<tools>" in prompt and '"get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18C\n</tool_response>" in prompt


def test_tool_choice_none_leaves_the_reply_as_text(oai: openai.OpenAI, server: AppServer) -> None:
    resp = oai.chat.completions.create(model="hermes", messages=ASK, tools=[WEATHER_TOOL], tool_choice="none")
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].message.content == HERMES_REPLY
    assert resp.choices[0].finish_reason == "stop"
    engine = _engine(server, "hermes")
    assert "<tools>" not in engine.detokenize(list(engine.last_request.prompt_token_ids))


def test_named_tool_choice_is_constrained_to_a_call_of_that_function(oai: openai.OpenAI, server: AppServer) -> None:
    resp = oai.chat.completions.create(model="constrained", messages=ASK, tools=[WEATHER_TOOL, SEARCH_TOOL],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    [call] = resp.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert resp.choices[0].finish_reason == "tool_calls"
    constraint = _engine(server, "constrained").constraint
    assert isinstance(constraint, OutputConstraint) and constraint.kind == "json_schema"
    schema = json.loads(constraint.source)
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == WEATHER_TOOL["function"]["parameters"]
    assert schema["required"] == ["name", "arguments"]


def test_required_tool_choice_allows_any_declared_function(oai: openai.OpenAI, server: AppServer) -> None:
    resp = oai.chat.completions.create(model="constrained", messages=ASK, tools=[WEATHER_TOOL, SEARCH_TOOL],
                                       tool_choice="required")
    assert resp.choices[0].message.tool_calls[0].function.name == "get_weather"
    schema = json.loads(_engine(server, "constrained").constraint.source)
    assert [s["properties"]["name"]["const"] for s in schema["anyOf"]] == ["get_weather", "web_search"]


def test_auto_sends_no_constraint(oai: openai.OpenAI, server: AppServer) -> None:
    oai.chat.completions.create(model="hermes", messages=ASK, tools=[WEATHER_TOOL])
    assert _engine(server, "hermes").last_request.sampling.constraint is None


def test_parallel_tool_calls_false_keeps_one_call(api: httpx.Client) -> None:
    body = {"model": "two-calls", "messages": ASK, "tools": [WEATHER_TOOL]}
    both = api.post("/v1/chat/completions", json=body).json()
    one = api.post("/v1/chat/completions", json={**body, "parallel_tool_calls": False}).json()
    assert len(both["choices"][0]["message"]["tool_calls"]) == 2
    assert len(one["choices"][0]["message"]["tool_calls"]) == 1


def test_unparseable_call_stays_content(oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(model="bad", messages=ASK, tools=[WEATHER_TOOL])
    assert resp.choices[0].message.content == BAD_CALL
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"
    streamed = list(oai.chat.completions.create(model="bad", messages=ASK, tools=[WEATHER_TOOL], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == BAD_CALL


# -- Zhipu SDKs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sdk", [zhipuai.ZhipuAI, zai.ZhipuAiClient])
def test_zhipu_sdks_tool_call_and_thinking(server: AppServer, key: str, sdk: type) -> None:
    client = sdk(api_key=key, base_url=server.zhipu_url, http_client=server.client(), max_retries=0)
    resp = client.chat.completions.create(model="glm", messages=ASK, tools=[WEATHER_TOOL],
                                          thinking={"type": "enabled"})
    message = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert message.reasoning_content == "The user wants the weather."
    assert message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 2}


@pytest.mark.parametrize("sdk", [zhipuai.ZhipuAI, zai.ZhipuAiClient])
def test_zhipu_sdks_stream_reasoning_then_a_whole_call(server: AppServer, key: str, sdk: type) -> None:
    client = sdk(api_key=key, base_url=server.zhipu_url, http_client=server.client(), max_retries=0)
    chunks = list(client.chat.completions.create(model="glm", messages=ASK, tools=[WEATHER_TOOL], stream=True))
    assert all(c.choices[0].delta.role == "assistant" for c in chunks)
    reasoning = "".join(c.choices[0].delta.reasoning_content or "" for c in chunks)
    assert reasoning == "The user wants the weather."
    [call_chunk] = [c for c in chunks if c.choices[0].delta.tool_calls]
    [call] = call_chunk.choices[0].delta.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == len(GLM_THINK.encode())


def test_thinking_switch_reaches_the_template(api: httpx.Client, server: AppServer) -> None:
    engine = _engine(server, "glm-chat")
    for thinking, ending in (("disabled", "<|assistant|>\n<think></think>"), ("enabled", "<|assistant|>")):
        r = api.post("/api/paas/v4/chat/completions",
                            json={"model": "glm-chat", "messages": ASK, "thinking": {"type": thinking}})
        assert r.status_code == 200, r.text
        assert engine.detokenize(list(engine.last_request.prompt_token_ids)).endswith(ending)
    r = api.post("/v1/chat/completions",
                        json={"model": "glm-chat", "messages": ASK, "reasoning_effort": "none"})
    assert engine.detokenize(list(engine.last_request.prompt_token_ids)).endswith("<think></think>")
    assert r.json()["choices"][0]["message"]["content"] == "Hello! 你好！"


@pytest.mark.parametrize("path, field", [("/api/paas/v4/chat/completions", {"thinking": {"type": "enabled"}}),
                                         ("/v1/chat/completions", {"reasoning_effort": "high"})])
def test_thinking_on_a_model_that_cannot_think_is_refused(api: httpx.Client, path: str, field: dict) -> None:
    r = api.post(path, json={"model": "plain", "messages": ASK, **field})
    assert r.status_code == 400
    assert next(iter(field)) in r.json()["error"]["message"]


# -- LangChain ------------------------------------------------------------------------------------


def test_langchain_bind_tools(server: AppServer, key: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="hermes", api_key=key, base_url=server.openai_url, http_client=server.client(),
                     max_retries=0)

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    reply = llm.bind_tools([get_weather]).invoke("What's the weather in Paris?")
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_weather"
    assert reply.tool_calls[0]["args"] == {"city": "Paris"}
    streamed = None
    for part in llm.bind_tools([get_weather]).stream("What's the weather in Paris?"):
        streamed = part if streamed is None else streamed + part
    assert streamed.tool_calls[0]["args"] == {"city": "Paris"}


def test_plain_http_tool_call_shape_zhipu(api: httpx.Client) -> None:
    r = api.post("/api/paas/v4/chat/completions", json={"model": "hermes", "messages": ASK,
                                                                 "tools": [WEATHER_TOOL]})
    body = r.json()
    message = body["choices"][0]["message"]
    assert message["tool_calls"][0]["type"] == "function"
    assert isinstance(message["tool_calls"][0]["function"]["arguments"], str)
    assert message["content"] == "Let me check."
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def _chunks(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def test_zhipu_tool_stream_sends_the_arguments_apart(api: httpx.Client) -> None:
    body = {"model": "hermes", "messages": ASK, "tools": [WEATHER_TOOL], "stream": True}
    whole = _chunks(api.post("/api/paas/v4/chat/completions", json=body).text)
    apart = _chunks(api.post("/api/paas/v4/chat/completions", json={**body, "tool_stream": True}).text)
    whole_parts = [p for c in whole for p in c["choices"][0]["delta"].get("tool_calls", [])]
    apart_parts = [p for c in apart for p in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(whole_parts) == 1 and json.loads(whole_parts[0]["function"]["arguments"]) == {"city": "Paris"}
    assert [p["index"] for p in apart_parts] == [0, 0]
    assert apart_parts[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert set(apart_parts[1]) == {"index", "function"}
    assert json.loads(apart_parts[1]["function"]["arguments"]) == {"city": "Paris"}


def test_clear_thinking_needs_a_template_with_that_switch(api: httpx.Client) -> None:
    r = api.post("/api/paas/v4/chat/completions", json={
        "model": "glm-chat", "messages": ASK, "thinking": {"type": "enabled", "clear_thinking": False}})
    assert r.status_code == 400
    assert "clear_thinking" in r.json()["error"]["message"]


def test_tool_parser_option_overrides_the_template(api: httpx.Client) -> None:
    """A ChatML template says nothing of GLM's format; the engine option does."""
    r = api.post("/v1/chat/completions", json={"model": "glm-opt", "messages": ASK, "tools": [WEATHER_TOOL]})
    [call] = r.json()["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}


def test_a_tool_schema_the_grammar_cannot_enforce_is_refused(api: httpx.Client) -> None:
    tool = {"type": "function", "function": {"name": "tag", "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}}
    r = api.post("/v1/chat/completions", json={"model": "constrained", "messages": ASK, "tools": [tool],
                                               "tool_choice": "required"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools" and "uniqueItems" in r.json()["error"]["message"]


def test_a_forced_call_cannot_also_follow_a_response_format(api: httpx.Client) -> None:
    r = api.post("/v1/chat/completions", json={"model": "constrained", "messages": ASK, "tools": [WEATHER_TOOL],
                                               "tool_choice": "required", "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_streamed_logprobs_cover_every_token_around_a_call(api: httpx.Client) -> None:
    """Tokens whose text the parser holds (the call's) still send their logprobs as they come."""
    body = {"model": "hermes", "messages": ASK, "tools": [WEATHER_TOOL], "stream": True, "logprobs": True,
            "stream_options": {"include_usage": True}}
    chunks = _chunks(api.post("/v1/chat/completions", json=body).text)
    reported = sum(len((c["choices"][0].get("logprobs") or {}).get("content") or [])
                   for c in chunks if c["choices"])
    assert reported == chunks[-1]["usage"]["completion_tokens"] == len(HERMES_REPLY.encode())


def test_an_async_task_replies_with_reasoning_and_tool_calls(server: AppServer, key: str) -> None:
    """Background chat (Zhipu's async tasks, batch lines) parses the reply as an interactive one."""
    client = zhipuai.ZhipuAI(api_key=key, base_url=server.zhipu_url, http_client=server.client(), max_retries=0)
    task = client.chat.asyncCompletions.create(model="glm", messages=ASK, tools=[WEATHER_TOOL])
    deadline = time.monotonic() + 30
    while (result := client.chat.asyncCompletions.retrieve_completion_result(task.id)).task_status == "PROCESSING":
        assert time.monotonic() < deadline, "the async task did not finish"
        time.sleep(0.1)
    assert result.task_status == "SUCCESS"
    message = result.choices[0].message
    assert result.choices[0].finish_reason == "tool_calls"
    assert message.reasoning_content == "The user wants the weather."
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 2}
