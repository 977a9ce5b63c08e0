"""No field silently ignored; stream framing as each platform sends it; models by id; Zhipu's
tokenizer; engine faults that say whether a retry can help. In process, plain HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from glmaas.engines.base import Delta, EngineError, GenerationRequest, ModelInfo
from glmaas.engines.mock import MockEngine
from tests.inprocess import AppServer

OPENAI, ZHIPU = "/v1/chat/completions", "/api/paas/v4/chat/completions"
ASK = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


class RestartingEngine(MockEngine):
    """Fails as an engine that is being restarted does: a retry may succeed."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        raise EngineError("the engine is closed", retryable=True)
        yield Delta()  # pragma: no cover - makes this an async generator


class DescribedEmbedder:
    """An embedding model by its description alone: enough to be listed and looked up."""

    dimensions, vocab_size = 8, 100

    def __init__(self, model_id: str) -> None:
        self.info = ModelInfo(model_id=model_id, context_length=512, chat_template=None)

    def tokenize(self, text: str) -> list[int]:
        return []

    def frame(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        return tuple(token_ids)

    async def embed(self, inputs: Sequence[tuple[int, ...]]) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = AppServer(tmp_path_factory.mktemp("fields"), "--no-default-model", "--model", "mock=mock",
                       "--model", "broken=mock:fail_after=3", "--model", "priced=mock", engines=(RestartingEngine("restarting"), DescribedEmbedder("embedder")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(server: AppServer) -> httpx.Client:
    return server.client(headers={"Authorization": f"Bearer {server.create_key()}"})


def _events(body: str) -> list[dict | str]:
    out: list[dict | str] = []
    for line in body.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("field, value", [
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    ("store", True),
    ("service_tier", "flex"),
    ("watermark_enabled", True),
    ("meta", {"bot_name": "x"}),
    ("extra", {"target": {"path": "a.py", "language": "python", "code_prefix": "def"}}),
    ("tools", [{"type": "retrieval", "retrieval": {"knowledge_id": "k"}}]),
    ("tool_choice", {"type": "function", "function": {"name": "not_declared"}}),
    ("tool_choice", "required"),
    ("n", 2),
])
@pytest.mark.parametrize("path", [OPENAI, ZHIPU])
def test_fields_that_cannot_be_honoured_are_refused_by_name(api: httpx.Client, path: str, field: str,
                                                            value: object) -> None:
    r = api.post(path, json={"model": "mock", "messages": ASK, field: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert field in error["message"]
    if path == OPENAI:
        assert error["param"].split(".")[0] == field
    else:
        assert error["code"] == "1214"


@pytest.mark.parametrize("field, value", [("store", False), ("modalities", ["text"]), ("watermark_enabled", False),
                                          ("service_tier", "auto"), ("parallel_tool_calls", True),
                                          ("tool_choice", "auto"), ("thinking", {"type": "disabled"}),
                                          ("response_format", None), ("thinking", None)])
def test_fields_asking_for_nothing_special_are_accepted(api: httpx.Client, field: str, value: object) -> None:
    r = api.post(ZHIPU, json={"model": "mock", "messages": ASK, field: value})
    assert r.status_code == 200, r.text


def test_developer_role_is_a_system_message(server: AppServer, api: httpx.Client) -> None:
    r = api.post(OPENAI, json={"model": "mock", "messages": [
        {"role": "developer", "content": "Answer in French."}, *ASK]})
    assert r.status_code == 200, r.text
    engine = server.app.state.glmaas.registry.get("mock")
    prompt = engine.detokenize(list(engine.last_request.prompt_token_ids))
    assert prompt.startswith("<|im_start|>system\nAnswer in French.<|im_end|>")


def test_zhipu_stream_names_the_role_on_every_delta(api: httpx.Client) -> None:
    events = _events(api.post(ZHIPU, json={"model": "mock", "messages": ASK, "stream": True}).text)
    chunks = [e for e in events if isinstance(e, dict)]
    assert len(chunks) > 3 and events[-1] == "[DONE]"
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "usage" in chunks[-1]


def test_openai_stream_sends_usage_in_a_chunk_without_choices(api: httpx.Client) -> None:
    events = _events(api.post(OPENAI, json={"model": "mock", "messages": ASK, "stream": True,
                                                   "stream_options": {"include_usage": True}}).text)
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    finish = chunks[-1]["choices"][0]
    assert (finish["delta"], finish["finish_reason"]) == ({}, "stop")
    assert all("usage" not in c for c in chunks)
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])


@pytest.mark.parametrize("path", [OPENAI, ZHIPU])
@pytest.mark.parametrize("model, retry", [("broken", "false"), ("restarting", "true")])
def test_engine_faults_say_whether_a_retry_can_help(api: httpx.Client, path: str, model: str, retry: str) -> None:
    r = api.post(path, json={"model": model, "messages": ASK})
    assert r.status_code == 500
    assert r.headers["x-should-retry"] == retry


@pytest.mark.parametrize("prefix", ["/v1", "/api/paas/v4"])
def test_model_by_id(api: httpx.Client, prefix: str) -> None:
    for model in ("mock", "embedder"):
        r = api.get(f"{prefix}/models/{model}")
        assert r.status_code == 200
        assert r.json()["id"] == model and r.json()["object"] == "model"
    missing = api.get(f"{prefix}/models/nope")
    assert missing.status_code in (400, 404) and "nope" in missing.text


def test_model_a_key_may_not_use_does_not_exist_for_it(server: AppServer) -> None:
    key = server.create_key("--models", "broken")
    r = server.client().get("/v1/models/mock", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404


def test_tokenizer_counts_the_chat_prompt_and_costs_nothing(server: AppServer, api: httpx.Client) -> None:
    server.cli("accounts", "topup", "default", "10")
    # A model no request has used yet: its price is read afresh.
    server.cli("prices", "set", "priced", "--input", "1", "--cached-input", "1", "--output", "1")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]
    body = {"model": "priced", "messages": messages, "tools": [WEATHER_TOOL], "request_id": "tok-1"}
    r = api.post("/api/paas/v4/tokenizer", json=body)
    assert r.status_code == 200, r.text
    counted = r.json()["usage"]["prompt_tokens"]
    chat = api.post(ZHIPU, json={"model": "priced", "messages": messages, "tools": [WEATHER_TOOL],
                                 "max_tokens": 1, "request_id": "tok-chat"}).json()
    assert counted == chat["usage"]["prompt_tokens"]
    row = server.wait_usage("tok-1")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost"], row["status"]) == (0, 0, 0, "ok")
    assert server.wait_usage("tok-chat")["cost"] > 0  # the same price does charge a chat


def test_tokenizer_refuses_an_unknown_model(api: httpx.Client) -> None:
    r = api.post("/api/paas/v4/tokenizer", json={"model": "nope", "messages": ASK})
    assert r.status_code == 400 and r.json()["error"]["code"] == "1211"
