"""Constrained decoding, logprobs and the sampling fields on the real default model (SmolLM2).

Short outputs on small schemas, one thread, so the file stays fast on two shared cores."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from glmaas.engines.base import (
    Delta,
    GenerationRequest,
    InvalidRequest,
    OutputConstraint,
    SamplingParams,
)
from glmaas.engines.constrained import (
    ConstraintError,
    check,
    framed_json_constraint,
    json_schema_constraint,
)
from glmaas.engines.registry import default_model_path

llamacpp = pytest.importorskip("glmaas.engines.llamacpp")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine():
    eng = llamacpp.LlamaCppEngine.from_spec(
        "smollm2", default_model_path(), {"slots": "4", "ctx": "256", "chunk": "64", "threads": "1"})
    yield eng
    asyncio.run(eng.close())


def chat(engine, text: str) -> tuple[int, ...]:
    return tuple(engine.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"))


async def collect(engine, prompt: tuple[int, ...], **sampling) -> list[Delta]:
    sampling.setdefault("temperature", 0.0)
    return [d async for d in engine.generate(GenerationRequest("t", prompt, SamplingParams(**sampling)))]


def generate(engine, prompt: tuple[int, ...], **sampling) -> list[Delta]:
    return asyncio.run(collect(engine, prompt, **sampling))


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def test_unsupported_schema_features_are_named() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "dependentSchemas": {"a": {}}}
    with pytest.raises(ConstraintError, match="dependentSchemas"):
        check(json_schema_constraint(schema))


def test_a_schema_that_is_not_json_is_refused() -> None:
    with pytest.raises(ConstraintError, match="not valid JSON"):
        check(OutputConstraint("json_schema", "{not json"))


def test_json_schema_output_validates(engine) -> None:
    prompt = chat(engine, "Describe a person as JSON with name, age and city.")
    deltas = generate(engine, prompt, max_tokens=40, constraint=json_schema_constraint(PERSON))
    assert deltas[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text(deltas)), PERSON)


def test_json_object_output_is_an_object(engine) -> None:
    prompt = chat(engine, "Give me a JSON object about a cat.")
    deltas = generate(engine, prompt, max_tokens=60, temperature=0.8, seed=3,
                      constraint=OutputConstraint("json_object"))
    if deltas[-1].finish_reason == "stop":
        assert isinstance(json.loads(text(deltas)), dict)
    else:  # cut by max_tokens: still a prefix of an object
        assert text(deltas).startswith("{")


def test_framed_json_has_its_prefix_schema_and_suffix(engine) -> None:
    args = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
            "additionalProperties": False}
    constraint = framed_json_constraint('<tool_call>{"name": "weather", "arguments": ', args, "}</tool_call>")
    deltas = generate(engine, chat(engine, "What is the weather in Rome?"), max_tokens=40, constraint=constraint)
    out = text(deltas)
    assert out.startswith('<tool_call>{"name": "weather", "arguments": ') and out.endswith("}</tool_call>")
    call = json.loads(out.removeprefix("<tool_call>").removesuffix("</tool_call>"))
    jsonschema.validate(call["arguments"], args)


def test_a_constrained_sequence_leaves_its_batch_neighbours_alone(engine) -> None:
    free = chat(engine, "Write a short story about a fox.")
    alone = [t for d in generate(engine, free, max_tokens=12) for t in d.token_ids]

    async def together() -> tuple[list[Delta], list[Delta]]:
        return await asyncio.gather(
            collect(engine, free, max_tokens=12),
            collect(engine, chat(engine, "A person as JSON."), max_tokens=40,
                    constraint=json_schema_constraint(PERSON)))

    beside, constrained = asyncio.run(together())
    assert [t for d in beside for t in d.token_ids] == alone
    jsonschema.validate(json.loads(text(constrained)), PERSON)


def test_a_bad_constraint_fails_before_generation(engine) -> None:
    async def first() -> None:
        constraint = OutputConstraint("json_schema", json.dumps({"type": "object", "dependentSchemas": {}}))
        await anext(aiter(engine.generate(GenerationRequest("t", chat(engine, "hi"), SamplingParams(4, constraint=constraint)))))

    with pytest.raises(ConstraintError):
        asyncio.run(first())
    assert engine.active_sequences() == 0


def test_logit_bias_outside_the_vocabulary_is_refused(engine) -> None:
    with pytest.raises(InvalidRequest):
        generate(engine, chat(engine, "hi"), max_tokens=2, logit_bias={10**7: 1.0})


def test_logit_bias_steers_the_real_model(engine) -> None:
    prompt = chat(engine, "Say something.")
    banana = engine.tokenize(" banana")[0]
    deltas = generate(engine, prompt, max_tokens=3, logit_bias={banana: 100.0})
    assert [t for d in deltas for t in d.token_ids] == [banana] * 3


def test_logprobs_follow_the_greedy_choice_and_skip_the_end_token(engine) -> None:
    deltas = generate(engine, chat(engine, "Answer with one word: is fire hot?"), max_tokens=20, logprobs=3)
    assert deltas[-1].finish_reason == "stop"
    entries = [e for d in deltas for e in (d.logprobs or ())]
    assert len(entries) == deltas[-1].usage.completion_tokens - 1  # the end token is not reported
    for e in entries:
        assert len(e.top) == 3
        assert e.top[0][0] == e.token_id and e.logprob == e.top[0][2] <= 0.0
        assert e.top[0][2] >= e.top[1][2] >= e.top[2][2]
    assert "".join(e.text for e in entries) == text(deltas)
