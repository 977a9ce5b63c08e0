"""The embedded default models, SmolLM2-135M-Instruct in llama.cpp and all-MiniLM-L6-v2, through
the SDKs."""

from __future__ import annotations

import openai
import pytest
import zhipuai

from tests.conftest import Server, start_server


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tmp_path_factory.mktemp("real-model"), timeout=120)
    yield server
    server.stop()


def test_default_model_generates_with_exact_usage(real_server: Server) -> None:
    key = real_server.create_key()
    client = openai.OpenAI(api_key=key, base_url=real_server.openai_url, max_retries=0)
    assert "smollm2-135m-instruct" in {m.id for m in client.models.list()}
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8, temperature=0,
    )
    resp = raw.parse()
    assert resp.choices[0].message.content.strip()
    assert resp.choices[0].finish_reason in {"length", "stop"}
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.prompt_tokens > 10
    row = real_server.wait_usage(raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        resp.usage.prompt_tokens, resp.usage.completion_tokens)


def test_default_model_streams_chinese_via_zhipuai(real_server: Server) -> None:
    key = real_server.create_key()
    client = zhipuai.ZhipuAI(api_key=key, base_url=real_server.zhipu_url, max_retries=0)
    chunks = list(client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "你好，请介绍一下北京。"}],
        max_tokens=6, stream=True, do_sample=False,
    ))
    last = chunks[-1]
    assert last.choices[0].finish_reason in {"length", "stop"}
    assert last.usage.completion_tokens <= 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "\ufffd" not in text  # no character split across tokens


def test_default_embedding_model_is_served_beside_it(real_server: Server) -> None:
    key = real_server.create_key()
    client = openai.OpenAI(api_key=key, base_url=real_server.openai_url, max_retries=0)
    assert "all-minilm-l6-v2" in {m.id for m in client.models.list()}
    resp = client.embeddings.create(model="all-minilm-l6-v2", input="What is the capital of France?")
    assert len(resp.data[0].embedding) == 384 and resp.usage.prompt_tokens == 9


def test_default_model_serves_legacy_completions(real_server: Server) -> None:
    key = real_server.create_key()
    client = openai.OpenAI(api_key=key, base_url=real_server.openai_url, max_retries=0)
    raw = client.completions.with_raw_response.create(
        model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2)
    done = raw.parse()
    choice = done.choices[0]
    assert choice.text.strip() and choice.finish_reason in {"length", "stop"}
    # The end token, when it came, is counted but has no logprobs entry.
    assert len(choice.logprobs.tokens) == done.usage.completion_tokens - (choice.finish_reason == "stop") <= 6
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    row = real_server.wait_usage(raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (done.usage.prompt_tokens, done.usage.completion_tokens)
    chunks = list(client.completions.create(model="smollm2-135m-instruct", prompt="The capital of France is",
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens


def test_default_model_refuses_a_suffix_it_cannot_infill(real_server: Server) -> None:
    """The SmolLM2 GGUF names no fill-in-the-middle tokens."""
    key = real_server.create_key()
    client = openai.OpenAI(api_key=key, base_url=real_server.openai_url, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="smollm2-135m-instruct", prompt="def f(x):", suffix="    return y")
    assert refused.value.body["param"] == "suffix" and "fill in the middle" in refused.value.body["message"]
