"""Structured output, logprobs and sampling fields through the real clients.

The constrained paths run on the embedded default model (SmolLM2-135M); the 400s on the mock."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import instructor
import jsonschema
import openai
import pytest
import zhipuai
from pydantic import BaseModel, Field

from glmaas.engines.registry import default_model_path
from tests.conftest import Server, start_server

MODEL = "smollm2-135m-instruct"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


class City(BaseModel):
    name: str = Field(max_length=16)
    country: Literal["France", "Italy", "Norway"]


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory):
    # One llama.cpp thread: on two shared cores its spinning barrier makes two threads far slower.
    spec = f"{MODEL}=llamacpp:{default_model_path()},threads=1,slots=8,ctx=512"
    server = start_server(tmp_path_factory.mktemp("structured"), "--model", spec, timeout=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(real_server: Server) -> openai.OpenAI:
    return openai.OpenAI(api_key=real_server.create_key(), base_url=real_server.openai_url, max_retries=0)


@pytest.fixture()
def mock_client(mock_server: Server, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=mock_server.openai_url, max_retries=0)


def person(client: openai.OpenAI, seed: int) -> str:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}],
        max_tokens=30, temperature=1.0, seed=seed,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    assert resp.choices[0].finish_reason == "stop"
    return resp.choices[0].message.content


def test_fifty_seeded_requests_all_validate(client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda seed: person(client, seed), range(50)))
    for reply in replies:
        jsonschema.validate(json.loads(reply), PERSON)
    assert len(set(replies)) > 1  # seeds differ, so do the people


def test_openai_parse_returns_the_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Name a city in Italy."}],
        response_format=City, max_tokens=40, temperature=0,
    )
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and city.country in {"France", "Italy", "Norway"}


# LangChain's two methods that carry the schema to the server, which then guarantees it; its
# json_mode leaves the schema to the prompt, more than a 135M model reliably follows.
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(real_server: Server, client: openai.OpenAI, method: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, api_key=client.api_key, base_url=real_server.openai_url, max_retries=0,
                     temperature=0, max_tokens=60)
    city = llm.with_structured_output(City, method=method).invoke("Name a city in Italy.")
    assert isinstance(city, City) and city.country in {"France", "Italy", "Norway"}


def test_json_object_mode_returns_an_object(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a dog in JSON."}],
        max_tokens=60, temperature=0, response_format={"type": "json_object"},
    )
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(resp.choices[0].message.content), dict)
    else:
        assert resp.choices[0].message.content.startswith("{")


def test_zhipu_dialect_json_mode_streamed(real_server: Server) -> None:
    client = zhipuai.ZhipuAI(api_key=real_server.create_key(), base_url=real_server.zhipu_url, max_retries=0)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}],
        max_tokens=30, temperature=0.9, seed=5, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    ))
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks)), PERSON)


@pytest.mark.parametrize("mode", [instructor.Mode.JSON, instructor.Mode.JSON_SCHEMA, instructor.Mode.TOOLS])
def test_instructor_extracts_a_model(client: openai.OpenAI, mode: instructor.Mode) -> None:
    patched = instructor.from_openai(client, mode=mode)
    city = patched.chat.completions.create(
        model=MODEL, response_model=City, max_retries=0, max_tokens=100, temperature=0,
        messages=[{"role": "user", "content": "Oslo is a city. Extract it."}],
    )
    assert isinstance(city, City)


def test_seed_repeats_end_to_end_beside_other_traffic(client: openai.OpenAI) -> None:
    def seeded(_: int) -> str:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Write a line about rain."}],
            max_tokens=12, temperature=1.0, seed=4242).choices[0].message.content

    def other(i: int) -> str:
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=12, temperature=1.0).choices[0].message.content

    alone = seeded(0)
    with ThreadPoolExecutor(6) as pool:
        busy = [pool.submit(other, i) for i in range(4)]
        again = [pool.submit(seeded, i) for i in range(2)]
        assert [f.result() for f in again] == [alone, alone]
        [f.result() for f in busy]


def reply(client: openai.OpenAI, **fields: object) -> str:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write the word cat five times."}], max_tokens=10,
        **fields).choices[0].message.content


@pytest.mark.parametrize("fields", [{"top_k": 1}, {"min_p": 1.0}])
def test_top_k_and_min_p_keep_only_the_best_token(client: openai.OpenAI, fields: dict) -> None:
    greedy = reply(client, temperature=0)
    assert {reply(client, temperature=1.5, seed=s, extra_body=fields) for s in range(3)} == {greedy}


@pytest.mark.parametrize("fields", [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0},
                                    {"extra_body": {"repetition_penalty": 2.0}}])
def test_penalties_change_a_repetitive_reply(client: openai.OpenAI, fields: dict) -> None:
    assert reply(client, temperature=0, **fields) != reply(client, temperature=0)


def test_logit_bias_on_the_end_token_ends_the_reply_at_once(client: openai.OpenAI) -> None:
    end = "2"  # <|im_end|> in SmolLM2's vocabulary
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=10, logit_bias={end: 100})
    assert (resp.choices[0].message.content, resp.usage.completion_tokens) == ("", 1)


def test_logit_bias_outside_the_vocabulary_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, logit_bias={"99999999": 1})


def test_logprobs_in_the_openai_shape(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=2,
    )
    content = resp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    assert len(content) == resp.usage.completion_tokens - (resp.choices[0].finish_reason == "stop")
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].token == t.token  # greedy takes the most likely


def test_logprobs_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=1, stream=True,
    )
    tokens = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=1)
    assert [(t.token, round(t.logprob, 4)) for t in tokens] == [
        (t.token, round(t.logprob, 4)) for t in plain.choices[0].logprobs.content]


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert resp.choices[0].logprobs is None


def test_unsupported_schema_feature_is_a_400_naming_it(client: openai.OpenAI, real_server: Server) -> None:
    schema = {"type": "object", "dependentSchemas": {"a": {}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert "dependentSchemas" in info.value.message
    assert info.value.body["param"] == "response_format"


@pytest.mark.parametrize("field, value", [
    ("top_logprobs", 21), ("top_k", -1), ("min_p", 1.5), ("frequency_penalty", 2.5),
    ("presence_penalty", -3), ("repetition_penalty", 0), ("logit_bias", {"5": 101}),
    ("logit_bias", {"hello": 1}), ("response_format", {"type": "yaml"}),
    ("response_format", {"type": "json_schema"}),
])
def test_out_of_range_sampling_fields_are_400s(mock_client: openai.OpenAI, field: str, value: object) -> None:
    extra = {field: value, **({"logprobs": True} if field == "top_logprobs" else {})}
    with pytest.raises(openai.BadRequestError) as info:
        mock_client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body=extra)
    assert field in info.value.message


def test_top_logprobs_needs_logprobs(mock_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        mock_client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=2, top_logprobs=2)


def test_the_mock_refuses_a_constraint_it_cannot_follow(mock_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="cannot constrain"):
        mock_client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            response_format={"type": "json_object"})
