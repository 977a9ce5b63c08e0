"""Embeddings through the official SDKs (openai, zhipuai, zai-sdk), LangChain and plain HTTP,
against a real server serving all-MiniLM-L6-v2 and a GGUF embedding model."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest
import zai
import zhipuai
from tokenizers import Tokenizer

from glmaas.engines.registry import default_embedding_folder, default_model_path
from tests.api.billing_helpers import (
    INPUT,
    assert_books_balance,
    balance_micro,
    funded_key,
    price_all,
)
from tests.conftest import Server, start_server

MODEL = "all-minilm-l6-v2"
PRICED = "minilm-priced"  # the same model under a priced id, priced before its first request
TEXTS = ["The sea is calm tonight.", "向量检索让搜索更准确。", "Embeddings map text to vectors."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    srv = start_server(tmp_path_factory.mktemp("embeddings"), "--no-default-model", "--model", "mock=mock",
                       "--model", f"{MODEL}=sentence:{default_embedding_folder()}",
                       "--model", f"{PRICED}=sentence:{default_embedding_folder()}",
                       "--model", f"smol-embed=llamacpp:{default_model_path()},embedding=true,pooling=last,threads=2",
                       timeout=120)
    price_all(srv, PRICED)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    return server.create_key("--name", "embeddings")


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer.from_file(str(default_embedding_folder() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture()
def client(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)


def framed_tokens(tokenizer: Tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer.encode(t).ids) for t in texts)


def test_openai_default_base64_equals_float(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    as_base64 = client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64
    as_float = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    a = np.array([d.embedding for d in as_base64.data])
    b = np.array([d.embedding for d in as_float.data])
    assert a.shape == (3, 384) and [d.index for d in as_base64.data] == [0, 1, 2]
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == framed_tokens(tokenizer, TEXTS)
    assert as_float.model == MODEL


def test_base64_on_the_wire_is_little_endian_float32(server: Server, key: str) -> None:
    r = httpx.post(f"{server.openai_url}/embeddings", headers={"Authorization": f"Bearer {key}"},
                   json={"model": MODEL, "input": "hello", "encoding_format": "base64"})
    import base64
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    assert len(raw) == 384 * 4
    assert abs(float(np.linalg.norm(np.frombuffer(raw, dtype="<f4"))) - 1.0) < 1e-5


def test_token_ids_give_the_vectors_of_their_text(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in TEXTS]
    by_text = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    by_ids = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    one = client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float")
    assert np.allclose([d.embedding for d in by_ids.data], [d.embedding for d in by_text.data], atol=1e-6)
    assert np.allclose(one.data[0].embedding, by_text.data[0].embedding, atol=1e-6)
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens


def test_dimensions_the_model_cannot_make_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="x", dimensions=128)
    error = info.value.body
    assert error["param"] == "dimensions" and "384" in error["message"]
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=384).data[0].embedding) == 384


def test_too_long_input_is_refused_unless_truncation_is_asked(client: openai.OpenAI) -> None:
    long_text = "token " * 400
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=["short", long_text])
    assert info.value.body["code"] == "context_length_exceeded" and "Input 1" in info.value.body["message"]
    cut = client.embeddings.create(model=MODEL, input=long_text, extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == 256


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "input": []}, "input"),
    ({"model": MODEL, "input": ["ok", ""]}, "input"),
    ({"model": MODEL, "input": [1, 2, 99999]}, "input"),
    ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x"}, "model"),
])
def test_bad_requests_are_400s_in_openai_shape(server: Server, key: str, body: dict, param: str) -> None:
    r = httpx.post(f"{server.openai_url}/embeddings", headers={"Authorization": f"Bearer {key}"}, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param)


def test_chat_model_is_not_an_embedding_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="mock", input="x")
    assert "not an embedding model" in info.value.body["message"]


def test_zhipu_dialect_errors(server: Server, key: str) -> None:
    r = httpx.post(f"{server.zhipu_url}/embeddings", headers={"Authorization": f"Bearer {key}"},
                   json={"model": MODEL, "input": "x", "dimensions": 1024})
    assert r.status_code == 400 and r.json()["error"]["code"] == "1214"
    r = httpx.post(f"{server.zhipu_url}/embeddings", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "embedding-3", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "1211"


def test_zhipuai_sdk(server: Server, key: str, tokenizer: Tokenizer) -> None:
    client = zhipuai.ZhipuAI(api_key=key, base_url=server.zhipu_url, max_retries=0)
    resp = client.embeddings.create(model=MODEL, input=TEXTS, request_id="emb-zp-1")
    assert len(resp.data) == 3 and len(resp.data[0].embedding) == 384
    assert resp.usage.prompt_tokens == framed_tokens(tokenizer, TEXTS) and resp.usage.completion_tokens == 0
    row = server.wait_usage("emb-zp-1")
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (resp.usage.prompt_tokens, 0, "ok")


def test_zai_sdk(server: Server, key: str) -> None:
    client = zai.ZhipuAiClient(api_key=key, base_url=server.zhipu_url, max_retries=0)
    resp = client.embeddings.create(model=MODEL, input="你好")
    assert len(resp.data[0].embedding) == 384


def test_langchain_openai_embeddings(server: Server, key: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain otherwise tokenizes with tiktoken (an OpenAI
    # vocabulary, downloaded at first use) and sends those ids; this model reads its own.
    emb = OpenAIEmbeddings(model=MODEL, api_key=key, base_url=server.openai_url,
                           check_embedding_ctx_length=False, max_retries=0)
    docs = emb.embed_documents(["a cat sat on the mat", "the stock market fell"])
    query = emb.embed_query("where did the cat sit?")
    assert len(docs) == 2 and len(query) == 384
    assert np.dot(query, docs[0]) > np.dot(query, docs[1])


def test_gguf_embedding_model_served(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="smol-embed", input=["hello", "world"], encoding_format="float")
    assert [len(d.embedding) for d in resp.data] == [576, 576]
    assert resp.usage.prompt_tokens >= 2


def test_embeddings_are_billed_at_the_input_price(server: Server) -> None:
    key = funded_key(server, "emb-acme", "1")
    client = openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)
    before = balance_micro(server, "emb-acme")
    raw = client.embeddings.with_raw_response.create(model=PRICED, input=TEXTS)
    resp = raw.parse()
    row = server.wait_usage(raw.headers["x-request-id"])
    assert row["prompt_tokens"] == resp.usage.prompt_tokens
    assert before - balance_micro(server, "emb-acme") == resp.usage.prompt_tokens * INPUT
    assert_books_balance(server)


def test_unfunded_account_is_refused(server: Server) -> None:
    key = funded_key(server, "emb-broke", "0")
    client = openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model=PRICED, input="x")
    assert info.value.body["code"] == "insufficient_quota"
