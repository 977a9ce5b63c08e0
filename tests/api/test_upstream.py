"""glmaas in front of real upstream servers on loopback: llama-cpp-python's OpenAI server with the
default GGUF, and a second `glmaas serve` (mock engine) reached in both dialects. The official
SDKs call the front; its books must agree with what its clients were told."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import zhipuai

from glmaas.benchmarks.harness import free_port, start_process
from glmaas.benchmarks.servers import llama_cpp_server
from glmaas.engines.mock import DEFAULT_REPLY
from glmaas.engines.registry import default_model_path
from tests.api.billing_helpers import (
    CACHED,
    INPUT,
    OUTPUT,
    assert_books_balance,
    expected_cost,
    funded_key,
    price_all,
    query,
)
from tests.conftest import Server, start_server

UPSTREAM_KEY_ENV = "GLMAAS_TEST_UPSTREAM_KEY"
HI = [{"role": "user", "content": "hi"}]
MOCK_START = DEFAULT_REPLY[:4]


@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    """llama_cpp.server serving the default GGUF; its /v1 URL."""
    # One thread: on a loaded machine llama.cpp's spinning threads slow each other down.
    with llama_cpp_server(default_model_path(), threads=1, n_ctx=512) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A second glmaas (mock engines) and a key for it."""
    server = start_server(tmp_path_factory.mktemp("upstream"), "--no-default-model", "--model", "mock=mock",
                          "--model", "slow=mock:delay=0.05,repeat=10", "--model", "small=mock:context=64")
    yield server, server.create_key()
    server.stop()


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    """tests/api/scripted_upstream.py: reasoning, a tool call, an unknown field; its base URL."""
    port = free_port()
    with start_process("scripted-upstream", [sys.executable, str(Path(__file__).with_name("scripted_upstream.py")),
                                             str(port)], ready_url=f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, llama: str, upstream: tuple[Server, str],
          scripted: str) -> Iterator[Server]:
    back, key = upstream
    gguf = default_model_path()
    up = f"key_env={UPSTREAM_KEY_ENV}"
    data_dir = tmp_path_factory.mktemp("front")
    # The Zhipu upstream's key comes from the sealed store instead, set the operator's way (stdin).
    subprocess.run([sys.executable, "-m", "glmaas", "upstream-keys", "set", "back", "--data-dir", str(data_dir)],
                   input=key + "\n", capture_output=True, text=True, check=True, timeout=120)
    server = start_server(
        data_dir, "--no-default-model",
        "--model", f"smol=openai+{llama},model=smollm2-135m-instruct,tokenizer={gguf}",
        "--model", f"mock-up=openai+{back.openai_url},model=mock,{up}",
        "--model", f"slow-up=openai+{back.openai_url},model=slow,{up}",
        "--model", f"small-up=openai+{back.openai_url},model=small,{up}",
        "--model", f"zhipu-up=zhipu+{back.zhipu_url},model=mock,key_secret=back,auth=jwt",
        "--model", f"tools-up=openai+{scripted}/v1,model=scripted",
        env={UPSTREAM_KEY_ENV: key})
    price_all(server, "smol", "mock-up", "slow-up", "zhipu-up", "tools-up")
    yield server
    server.stop()


def _record(server: Server, request_id: str) -> sqlite3.Row:
    return server.wait_usage(request_id)


def test_openai_sdk_through_an_openai_upstream_bills_the_upstreams_usage(front: Server,
                                                                         upstream: tuple[Server, str]) -> None:
    key = funded_key(front, "sdk", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(model="mock-up", messages=HI)
    body = reply.parse()
    assert body.choices[0].message.content == DEFAULT_REPLY
    record = _record(front, reply.headers["x-request-id"])
    assert (record["prompt_tokens"], record["completion_tokens"]) == (body.usage.prompt_tokens,
                                                                     body.usage.completion_tokens)
    assert record["usage_source"] == "exact"
    assert record["cost"] == expected_cost(body.usage.prompt_tokens, body.usage.completion_tokens)
    # The upstream counted the same tokens: glmaas billed its usage, not a guess.
    back, _ = upstream
    last = query(back, "SELECT prompt_tokens, completion_tokens FROM usage_records ORDER BY id DESC LIMIT 1")[0]
    assert tuple(last) == (body.usage.prompt_tokens, body.usage.completion_tokens)


def test_openai_sdk_stream_reports_the_usage_it_is_billed(front: Server) -> None:
    key = funded_key(front, "sdk-stream", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    chunks = list(client.chat.completions.create(model="mock-up", messages=HI, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_REPLY
    usage = chunks[-1].usage
    record = _record(front, chunks[0].id.removeprefix("chatcmpl-"))
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage_source"]) == (
        usage.prompt_tokens, usage.completion_tokens, "exact")


def test_zhipu_sdk_through_a_zhipu_upstream_signed_with_jwt(front: Server) -> None:
    # Signed with the key sealed in the front's store (`key_secret=back`): the upstream let it in.
    key = funded_key(front, "zhipu", "1")
    client = zhipuai.ZhipuAI(api_key=key, base_url=front.zhipu_url, max_retries=0)
    body = client.chat.completions.create(model="zhipu-up", messages=HI, max_tokens=10)
    assert body.choices[0].message.content == DEFAULT_REPLY.encode()[:10].decode()
    assert body.choices[0].finish_reason == "length"
    assert body.usage.completion_tokens == 10


def test_llama_cpp_upstream_without_usage_is_billed_as_estimated(front: Server) -> None:
    key = funded_key(front, "llama", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    chunks = list(client.chat.completions.create(model="smol", messages=HI, max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert 1 <= usage.completion_tokens <= 8 and usage.prompt_tokens > 0
    record = _record(front, chunks[0].id.removeprefix("chatcmpl-"))
    # llama_cpp.server sends no usage in streams: the GGUF's tokenizer counted, and the record says so.
    assert record["usage_source"] == "estimated"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert record["cost"] == expected_cost(usage.prompt_tokens, usage.completion_tokens)


def test_a_non_streamed_request_to_llama_cpp_is_billed_from_its_exact_usage(front: Server) -> None:
    key = funded_key(front, "llama-whole", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(model="smol", messages=HI, max_tokens=5, temperature=0)
    body = reply.parse()
    assert body.choices[0].message.content.strip() and 1 <= body.usage.completion_tokens <= 5
    record = _record(front, reply.headers["x-request-id"])
    # Asked unstreamed, llama_cpp.server reports its usage: billed exactly, and the client told the same.
    assert record["usage_source"] == "exact"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (body.usage.prompt_tokens,
                                                                     body.usage.completion_tokens)


def test_an_upstream_refusal_is_a_4xx_in_the_callers_dialect_and_costs_nothing(front: Server) -> None:
    key = funded_key(front, "refused", "1")
    long = [{"role": "user", "content": "x" * 200}]  # beyond the upstream model's 64-token context
    for path, stream in (("/v1", False), ("/api/paas/v4", True)):
        r = httpx.post(f"{front.base_url}{path}/chat/completions", timeout=15,
                       json={"model": "small-up", "messages": long, "stream": stream},
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert ("code" in error and error["code"].isdigit()) if path != "/v1" else error["type"]
        record = _record(front, r.headers["x-request-id"])
        assert record["cost"] == 0
    assert_books_balance(front)


def test_a_client_disconnect_stops_the_upstream_at_once(front: Server, upstream: tuple[Server, str]) -> None:
    key = funded_key(front, "leaver", "1")
    with httpx.stream("POST", f"{front.openai_url}/chat/completions", timeout=15,
                      json={"model": "slow-up", "messages": HI, "stream": True},
                      headers={"Authorization": f"Bearer {key}"}) as r:
        request_id = r.headers["x-request-id"]
        read = 0
        for line in r.iter_lines():
            read += line.startswith("data: {")
            if read == 6:
                break
    record = _record(front, request_id)
    assert record["status"] == "aborted" and record["usage_source"] == "estimated"
    assert 5 <= record["completion_tokens"] <= 8
    # The upstream saw the connection close and stopped: its own record says aborted, early.
    back, _ = upstream
    deadline = time.monotonic() + 5
    while not (rows := query(back, "SELECT status, completion_tokens FROM usage_records "
                                   "WHERE model = 'slow' ORDER BY id DESC LIMIT 1")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rows[0]["status"] == "aborted" and rows[0]["completion_tokens"] < 20


def test_the_upstreams_key_is_never_shown(front: Server, upstream: tuple[Server, str]) -> None:
    _, upstream_key = upstream
    models = httpx.get(f"{front.openai_url}/models", headers={"Authorization": f"Bearer {funded_key(front, 'k', '0')}"})
    assert models.status_code == 200 and upstream_key not in models.text
    assert upstream_key.split(".")[1] not in front.log.read_text()
    # Sealed at rest too: no file of the front's data dir (its database included) holds the key.
    secret = upstream_key.split(".")[1].encode()
    assert not any(secret in p.read_bytes() for p in front.data_dir.rglob("*") if p.is_file())


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                          "parameters": {"type": "object",
                                                         "properties": {"city": {"type": "string"}}}}}]


def test_tool_calls_and_reasoning_pass_through_to_an_openai_client(front: Server, scripted: str) -> None:
    key = funded_key(front, "tools-openai", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="tools-up", messages=[{"role": "user", "content": "Weather in Beijing?"}], tools=WEATHER,
        tool_choice="auto", temperature=0.3, presence_penalty=0.5, response_format={"type": "json_object"})
    assert "secret_vendor_field" not in raw.text  # unknown upstream fields are dropped
    body = raw.parse()
    choice = body.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_w1", "get_weather", {"city": "Beijing"})
    assert choice.message.model_extra["reasoning_content"] == "The user wants the weather."
    assert (body.usage.prompt_tokens, body.usage.completion_tokens) == (31, 17)
    # The upstream's cached prompt tokens are passed through, and billed at the cached price.
    assert body.usage.prompt_tokens_details.cached_tokens == 11
    # Its reasoning tokens too: a part of the 17 completion tokens billed.
    assert body.usage.completion_tokens_details.reasoning_tokens == 6
    record = _record(front, raw.headers["x-request-id"])
    assert record["cached_tokens"] == 11
    assert record["cost"] == (31 - 11) * INPUT + 11 * CACHED + 17 * OUTPUT
    asked = httpx.get(f"{scripted}/last").json()  # what the upstream was sent
    assert asked["tools"] == WEATHER and asked["tool_choice"] == "auto"
    assert (asked["temperature"], asked["presence_penalty"], asked["response_format"]) == (
        0.3, 0.5, {"type": "json_object"})
    # The client did not stream, so neither was the upstream asked to.
    assert asked["model"] == "scripted" and "stream" not in asked


def test_a_tool_result_turn_reaches_the_upstream_in_wire_form(front: Server, scripted: str) -> None:
    key = funded_key(front, "tools-turn", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    call = {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}
    client.chat.completions.create(model="tools-up", tools=WEATHER, messages=[
        {"role": "user", "content": "Weather in Beijing?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "Sunny, 25 C"}])
    asked = httpx.get(f"{scripted}/last").json()["messages"]
    assert asked[1]["tool_calls"][0]["function"] == call["function"]  # arguments as JSON text
    assert (asked[2]["role"], asked[2]["tool_call_id"], asked[2]["content"]) == ("tool", "call_w1", "Sunny, 25 C")


def test_an_openai_upstream_answers_a_zhipu_client_in_zhipu_shape(front: Server, scripted: str) -> None:
    key = funded_key(front, "tools-zhipu", "1")
    client = zhipuai.ZhipuAI(api_key=key, base_url=front.zhipu_url, max_retries=0)
    chunks = list(client.chat.completions.create(
        model="tools-up", messages=[{"role": "user", "content": "Weather in Beijing?"}], tools=WEATHER,
        stream=True, do_sample=False))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert reasoning == "The user wants the weather."
    assert [(t.function.name, json.loads(t.function.arguments)) for t in calls] == [("get_weather", {"city": "Beijing"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls" and chunks[-1].usage.completion_tokens == 17
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 6
    asked = httpx.get(f"{scripted}/last").json()
    # Zhipu's greedy switch became the OpenAI form; Zhipu-only fields did not travel.
    assert asked["temperature"] == 0 and "do_sample" not in asked and "request_id" not in asked


def test_logprobs_and_response_format_reach_llama_cpp(front: Server) -> None:
    key = funded_key(front, "logprobs", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    body = client.chat.completions.create(model="smol", messages=HI, max_tokens=3, temperature=0,
                                          logprobs=True, top_logprobs=2)
    entries = body.choices[0].logprobs.content
    assert len(entries) == 3 and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries) == body.choices[0].message.content
    chunks = [c for c in client.chat.completions.create(model="smol", messages=HI, max_tokens=3, temperature=0,
                                                        logprobs=True, top_logprobs=2, stream=True)
              if c.choices and c.choices[0].delta.content]
    assert [e.token for c in chunks for e in c.choices[0].logprobs.content] == [e.token for e in entries]
    body = client.chat.completions.create(model="smol", max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "A JSON object with a name."}],
                                          response_format={"type": "json_object"})
    assert body.choices[0].message.content.lstrip().startswith("{")


def test_a_disconnect_stops_llama_cpp_server(front: Server, llama: str) -> None:
    """llama_cpp.server runs one request at a time: if it went on generating after the client
    left, the next request would wait for the rest of a 300-token reply."""
    key = funded_key(front, "llama-leaver", "1")
    no_end = {str(t): -100 for t in range(3)}  # SmolLM2's end tokens banned: the reply runs to max_tokens
    with httpx.stream("POST", f"{front.openai_url}/chat/completions", timeout=60,
                      json={"model": "smol", "messages": HI, "stream": True, "max_tokens": 300, "temperature": 0,
                            "logit_bias": no_end},
                      headers={"Authorization": f"Bearer {key}"}) as r:
        read = 0
        for line in r.iter_lines():
            read += line.startswith("data: {")
            if read == 4:
                break
    start = time.monotonic()
    after = httpx.post(f"{llama}/chat/completions", timeout=60,
                       json={"model": "smollm2-135m-instruct", "messages": HI, "max_tokens": 1})
    assert after.status_code == 200
    assert time.monotonic() - start < 5.0


# A pool: a glmaas upstream preferred (priority 0), llama_cpp.server as the fallback (priority 1).


def _zhipu_stream(server: Server, key: str, model: str) -> Iterator[dict]:
    with httpx.stream("POST", f"{server.zhipu_url}/chat/completions", timeout=30,
                      json={"model": model, "messages": HI, "stream": True, "max_tokens": 64},
                      headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                yield json.loads(line[6:])


def _reply(server: Server, key: str) -> str:
    """The pool's reply cut to 4 tokens: "This" from the mock engine, other words from SmolLM2."""
    r = httpx.post(f"{server.openai_url}/chat/completions", timeout=60,
                   json={"model": "pool", "messages": HI, "max_tokens": 4, "temperature": 0},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_a_pool_fails_over_and_readmits_a_restarted_upstream(tmp_path_factory: pytest.TempPathFactory,
                                                             llama: str) -> None:
    back_dir = tmp_path_factory.mktemp("pool-upstream")
    mock = ("--no-default-model", "--model", "mock=mock:delay=0.05")
    back = start_server(back_dir, *mock)
    front = None
    try:
        env = {UPSTREAM_KEY_ENV: back.create_key()}
        fast = "health_interval=0.3,cooldown=0.5"
        front = start_server(
            tmp_path_factory.mktemp("pool-front"), "--no-default-model",
            "--model", f"pool=openai+{back.openai_url},model=mock,key_env={UPSTREAM_KEY_ENV},priority=0,{fast}",
            "--model", f"pool=openai+{llama},model=smollm2-135m-instruct,priority=1,{fast}", env=env)
        price_all(front, "pool")
        key = funded_key(front, "pooled", "1")
        assert _reply(front, key) == MOCK_START  # the preferred upstream answers

        # The preferred upstream dies mid-stream: the stream ends as an engine fault, billed once
        # for what was delivered.
        chunks = []
        for chunk in _zhipu_stream(front, key, "pool"):
            chunks.append(chunk)
            if len(chunks) == 5:
                back.proc.kill()
                back.proc.wait()
        assert chunks[-1]["choices"][0]["finish_reason"] == "network_error"
        delivered = sum(bool(c["choices"][0]["delta"].get("content")) for c in chunks)
        assert chunks[-1]["usage"]["completion_tokens"] == delivered
        record = _record(front, chunks[0]["id"])
        assert (record["status"], record["usage_source"], record["completion_tokens"]) == (
            "error", "estimated", delivered)
        assert record["cost"] == expected_cost(record["prompt_tokens"], delivered)

        # New requests fail over to llama_cpp.server.
        assert _reply(front, key) != MOCK_START

        # Restarted, the upstream is re-admitted by the health checks and preferred again.
        back = start_server(back_dir, *mock, port=back.port)
        deadline = time.monotonic() + 10
        while _reply(front, key) != MOCK_START:
            assert time.monotonic() < deadline, "the restarted upstream was not re-admitted"
            time.sleep(0.2)
        assert_books_balance(front)
    finally:
        back.stop()
        if front is not None:
            front.stop()


def test_the_models_file_names_a_pool(tmp_path_factory: pytest.TempPathFactory, llama: str) -> None:
    folder = tmp_path_factory.mktemp("models-file")
    (folder / "models.toml").write_text(
        f'[[models]]\nid = "smol"\nurl = "openai+http://127.0.0.1:9/v1"\npriority = 0\n\n'
        f'[[models]]\nid = "smol"\nurl = "openai+{llama}"\nmodel = "smollm2-135m-instruct"\npriority = 1\n\n'
        f'[[models]]\nid = "local"\nspec = "mock"\n')
    server = start_server(folder / "data", "--no-default-model", "--models", str(folder / "models.toml"))
    try:
        key = server.create_key()
        ids = {m["id"] for m in httpx.get(f"{server.openai_url}/models",
                                          headers={"Authorization": f"Bearer {key}"}).json()["data"]}
        assert ids == {"smol", "local"}
        # The first upstream refuses connections: the request goes to the second.
        r = httpx.post(f"{server.openai_url}/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                       json={"model": "smol", "messages": HI, "max_tokens": 4})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        server.stop()



def test_legacy_completions_pass_through_to_an_openai_upstream(front: Server, upstream: tuple[Server, str]) -> None:
    """The back glmaas serves /v1/completions too: the front bills the usage it reports."""
    key = funded_key(front, "completions", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    raw = client.completions.with_raw_response.create(model="mock-up", prompt="Say it", max_tokens=100, logprobs=1)
    done = raw.parse()
    n = len(DEFAULT_REPLY.encode())  # the mock's tokens are bytes
    assert done.choices[0].text == DEFAULT_REPLY and done.choices[0].finish_reason == "stop"
    assert len(done.choices[0].logprobs.tokens) == n and done.choices[0].logprobs.tokens[:4] == list("This")
    record = _record(front, raw.headers["x-request-id"])
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage_source"]) == (6, n, "exact")
    assert record["cost"] == expected_cost(6, n)
    chunks = list(client.completions.create(model="mock-up", prompt="Say it", max_tokens=100, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == DEFAULT_REPLY
    assert chunks[-1].usage.completion_tokens == len(DEFAULT_REPLY.encode())
    # What the upstream refuses (a suffix its model cannot infill) is a 400 here too, free.
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="mock-up", prompt="Say it", suffix="done")


def test_legacy_completions_reach_llama_cpp_server(front: Server) -> None:
    key = funded_key(front, "completions-llama", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    raw = client.completions.with_raw_response.create(model="smol", prompt="The capital of France is",
                                                      max_tokens=5, temperature=0)
    done = raw.parse()
    assert done.choices[0].text and 1 <= done.usage.completion_tokens <= 5
    record = _record(front, raw.headers["x-request-id"])
    assert (record["prompt_tokens"], record["completion_tokens"]) == (done.usage.prompt_tokens,
                                                                     done.usage.completion_tokens)


def test_a_zhipu_upstream_has_no_legacy_completions(front: Server) -> None:
    key = funded_key(front, "completions-zhipu", "1")
    client = openai.OpenAI(base_url=front.openai_url, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="zhipu-up", prompt="hi")
    assert refused.value.body["param"] == "model"
    assert query(front, "SELECT COUNT(*) AS n FROM usage_records WHERE account_id IN "
                        "(SELECT id FROM accounts WHERE name = 'completions-zhipu')")[0]["n"] == 0
