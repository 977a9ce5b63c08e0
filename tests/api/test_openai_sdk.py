"""The OpenAI Python SDK, unchanged, against /v1."""

from __future__ import annotations

import openai
import pytest

from glmaas.engines.mock import CHAT_TEMPLATE, MockEngine
from glmaas.model.chat_template import render_chat
from tests.conftest import Server

MOCK_REPLY = "This is the mock engine. 你好，世界。"


@pytest.fixture()
def client(mock_server: Server, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=mock_server.openai_url, max_retries=0)


def test_plain_completion_returns_reply_and_usage(client: openai.OpenAI, mock_server: Server) -> None:
    resp = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "hello"}], max_tokens=200
    )
    assert resp.choices[0].message.content == MOCK_REPLY
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == len(MOCK_REPLY.encode())
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chinese_prompt_round_trip(client: openai.OpenAI, mock_server: Server) -> None:
    prompt = "请用中文介绍一下你自己。"
    raw = client.chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": prompt}]
    )
    resp = raw.parse()
    prompt_text = render_chat(CHAT_TEMPLATE, [{"role": "user", "content": prompt}])
    assert resp.usage.prompt_tokens == len(MockEngine().tokenize(prompt_text))
    assert "你好，世界。" in resp.choices[0].message.content
    assert raw.headers["x-request-id"]


def test_usage_told_equals_usage_recorded(client: openai.OpenAI, mock_server: Server) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": "count me"}], max_tokens=7
    )
    resp = raw.parse()
    row = mock_server.wait_usage(raw.headers["x-request-id"])
    assert resp.choices[0].finish_reason == "length"
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (
        resp.usage.prompt_tokens, resp.usage.completion_tokens, 0)
    assert row["completion_tokens"] == 7
    assert row["status"] == "ok"


def test_streaming_with_include_usage(client: openai.OpenAI, mock_server: Server) -> None:
    stream = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "stream please"}], stream=True,
        stream_options={"include_usage": True}, extra_body={"request_id": "stream-usage-1"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MOCK_REPLY
    # As OpenAI sends it: the finish chunk, then usage in a chunk of its own with no choices.
    finish, last = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason == "stop" and finish.usage is None
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == len(MOCK_REPLY.encode())
    assert all(c.usage is None for c in chunks[:-1])
    row = mock_server.wait_usage("stream-usage-1")
    assert row["completion_tokens"] == last.usage.completion_tokens
    assert row["prompt_tokens"] == last.usage.prompt_tokens


def test_streaming_without_include_usage_omits_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "x"}], stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_stop_string_cuts_the_reply(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="mock", messages=[{"role": "user", "content": "x"}], stop=["engine"])
    assert resp.choices[0].message.content == "This is the mock "
    assert resp.choices[0].finish_reason == "stop"


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"mock", "slow"} <= ids


def test_wrong_key_raises_authentication_error(mock_server: Server) -> None:
    bad = openai.OpenAI(api_key="0" * 32 + ".wrongsecret", base_url=mock_server.openai_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401
    assert info.value.body["code"] == "invalid_api_key"


def test_n_greater_than_one_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}], n=2)
    assert info.value.body["param"] == "n"
    assert "n=1" in info.value.body["message"]


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"


def test_prompt_over_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-context", messages=[{"role": "user", "content": "x" * 200}])
    assert info.value.body["code"] == "context_length_exceeded"
