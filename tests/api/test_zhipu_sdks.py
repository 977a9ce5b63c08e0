"""The `zhipuai` and `zai-sdk` packages, unchanged, against /api/paas/v4."""

from __future__ import annotations

import time

import jwt
import pytest
import zai
import zhipuai

from tests.conftest import Server

MOCK_REPLY = "This is the mock engine. 你好，世界。"
MESSAGES = [{"role": "system", "content": "你是一个乐于助人的助手。"},
            {"role": "user", "content": "你好"}]


def test_zhipuai_raw_key(mock_server: Server, api_key: str) -> None:
    client = zhipuai.ZhipuAI(api_key=api_key, base_url=mock_server.zhipu_url, max_retries=0)
    resp = client.chat.completions.create(model="mock", messages=MESSAGES, request_id="zp-raw-1")
    assert resp.choices[0].message.content == MOCK_REPLY
    assert resp.request_id == "zp-raw-1"
    assert resp.usage.prompt_tokens_details["cached_tokens"] == 0 if isinstance(
        resp.usage.prompt_tokens_details, dict) else resp.usage.prompt_tokens_details.cached_tokens == 0
    row = mock_server.wait_usage("zp-raw-1")
    assert row["completion_tokens"] == resp.usage.completion_tokens
    assert row["prompt_tokens"] == resp.usage.prompt_tokens


def test_zhipuai_jwt_with_token_cache(mock_server: Server, api_key: str) -> None:
    client = zhipuai.ZhipuAI(api_key=api_key, base_url=mock_server.zhipu_url,
                             disable_token_cache=False, max_retries=0)
    resp = client.chat.completions.create(model="mock", messages=MESSAGES)
    assert resp.choices[0].message.content == MOCK_REPLY


def test_zhipuai_stream_has_usage_on_the_finish_chunk(mock_server: Server, api_key: str) -> None:
    client = zhipuai.ZhipuAI(api_key=api_key, base_url=mock_server.zhipu_url, max_retries=0)
    chunks = list(client.chat.completions.create(
        model="mock", messages=MESSAGES, stream=True, max_tokens=10, request_id="zp-stream-1"))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == MOCK_REPLY.encode()[:10].decode()
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage.completion_tokens == 10
    row = mock_server.wait_usage("zp-stream-1")
    assert row["completion_tokens"] == 10


def test_zhipuai_wrong_key_is_authentication_error(mock_server: Server) -> None:
    client = zhipuai.ZhipuAI(api_key="f" * 32 + ".notTheSecret", base_url=mock_server.zhipu_url,
                             max_retries=0)
    with pytest.raises(zhipuai.APIAuthenticationError) as info:
        client.chat.completions.create(model="mock", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.response.json()["error"]["code"] == "1000"


def test_zhipuai_jwt_signed_with_wrong_secret_is_rejected(mock_server: Server, api_key: str) -> None:
    key_id = api_key.split(".")[0]
    client = zhipuai.ZhipuAI(api_key=f"{key_id}.wrongSecretWrongSecret", base_url=mock_server.zhipu_url,
                             disable_token_cache=False, max_retries=0)
    with pytest.raises(zhipuai.APIAuthenticationError):
        client.chat.completions.create(model="mock", messages=MESSAGES)


def test_expired_jwt_is_1003(mock_server: Server, api_key: str) -> None:
    import httpx

    key_id, secret = api_key.split(".")
    now_ms = int(time.time() * 1000)
    token = jwt.encode({"api_key": key_id, "exp": now_ms - 3_600_000, "timestamp": now_ms - 3_800_000},
                       secret, algorithm="HS256", headers={"alg": "HS256", "sign_type": "SIGN"})
    r = httpx.post(f"{mock_server.zhipu_url}/chat/completions", headers={"Authorization": token},
                   json={"model": "mock", "messages": MESSAGES})
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "1003", "message": "The token has expired."}}
    assert r.headers["x-should-retry"] == "false"


def test_zai_sdk_plain_and_stream(mock_server: Server, api_key: str) -> None:
    client = zai.ZhipuAiClient(api_key=api_key, base_url=mock_server.zhipu_url, max_retries=0)
    resp = client.chat.completions.create(model="mock", messages=MESSAGES)
    assert resp.choices[0].message.content == MOCK_REPLY
    chunks = list(client.chat.completions.create(model="mock", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == MOCK_REPLY
    assert chunks[-1].usage.completion_tokens == len(MOCK_REPLY.encode())


def test_zai_sdk_wrong_key(mock_server: Server) -> None:
    client = zai.ZhipuAiClient(api_key="a" * 32 + ".bad", base_url=mock_server.zhipu_url, max_retries=0)
    with pytest.raises(zai.core.APIAuthenticationError):
        client.chat.completions.create(model="mock", messages=MESSAGES)
