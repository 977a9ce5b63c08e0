"""`POST /v1/completions` through the openai SDK, in process (and streamed by a `glmaas serve`
process): the mock engine's plain completions (whole and streamed), refusals in OpenAI's shape that
cost nothing, the usage record and the ledger, and GLM filling a suffix's middle and a prompt's
[MASK] blanks on a tiny trained checkpoint, checked against the one-sequence reference generation.
The default llama.cpp model's completions are in test_default_model.py, an upstream's in
test_upstream.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest

from glmaas.api.completions.serving import choices
from glmaas.engines.base import GenerationRequest
from glmaas.engines.base import SamplingParams as Sampling
from glmaas.engines.glm import GLMEngine
from glmaas.engines.mock import DEFAULT_REPLY
from glmaas.model.glm_checkpoint import load_checkpoint
from glmaas.model.glm_generate import SamplingParams, fill_blanks
from tests.api.billing_helpers import balance_micro, expected_cost, funded_key, price_all, query
from tests.conftest import Server
from tests.fuzz_helpers import assert_error_shape
from tests.glm_checkpoints import trained_checkpoint
from tests.inprocess import AppServer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("glm-trained"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path):
    server = AppServer(tmp_path_factory.mktemp("completions"), "--no-default-model", "--model", "mock=mock",
                       "--model", f"glm=glm:{checkpoint}")
    price_all(server, "mock", "glm")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(server: AppServer) -> str:
    return funded_key(server, "writer", "100")


@pytest.fixture(scope="module")
def client(server: AppServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.openai_url, http_client=server.client(), max_retries=0)


def _reference(checkpoint: Path, engine: GLMEngine, prompt: list[int],
               max_new: int) -> tuple[list[int], list[str], int]:
    """Part A, the text of each blank's fill as the one-sequence reference generates them greedily,
    and the tokens it sampled (each blank's closing [E] included)."""
    model, tokenizer, _ = load_checkpoint(checkpoint)
    part_a, _ = engine.part_a(prompt)
    pieces = fill_blanks(model, part_a, tokenizer.special, SamplingParams(max_new_tokens=max_new, temperature=0))
    assert all(len(p) < max_new for p in pieces)  # each blank closed by its [E]
    return part_a, [tokenizer.decode(p) for p in pieces], sum(len(p) + 1 for p in pieces)


def test_a_completion_with_the_mock_engine(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="mock", prompt="Say it", max_tokens=9, logprobs=1)
    done = raw.parse()
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    choice = done.choices[0]
    assert choice.text == DEFAULT_REPLY[:9] and choice.finish_reason == "length"
    assert choice.logprobs.tokens == list(DEFAULT_REPLY[:9]) and choice.logprobs.text_offset == list(range(9))
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (6, 9)


def test_a_streamed_completion_adds_up_to_the_whole_one(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="mock", prompt=["Say it"], max_tokens=100, stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == DEFAULT_REPLY
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(DEFAULT_REPLY.encode())
    plain = list(client.completions.create(model="mock", prompt="Say it", max_tokens=3, stream=True))
    assert all(c.usage is None for c in plain)


def test_a_server_process_streams_a_completion_as_it_is_made(mock_server: Server, api_key: str) -> None:
    """`glmaas serve` itself (the mock engine, one token every 50 ms): chunks arrive one by one."""
    client = openai.OpenAI(api_key=api_key, base_url=mock_server.openai_url, max_retries=0)
    done = client.completions.create(model="slow", prompt="Say it", max_tokens=6)
    assert done.choices[0].text == DEFAULT_REPLY[:6] and done.usage.completion_tokens == 6
    arrivals, texts = [], []
    for chunk in client.completions.create(model="slow", prompt="Say it", max_tokens=6, stream=True,
                                           stream_options={"include_usage": True}):
        arrivals.append(time.monotonic())
        texts.append(chunk.choices[0].text if chunk.choices else None)
    assert "".join(t for t in texts if t) == DEFAULT_REPLY[:6] and texts[-1] is None
    assert arrivals[5] - arrivals[0] > 0.15  # streamed as generated, not buffered to the end


def test_several_prompts_make_a_choice_each_billed_together(server: AppServer, client: openai.OpenAI) -> None:
    prompts = ["Say it", "CD", "Again, please"]
    raw = client.completions.with_raw_response.create(model="mock", prompt=prompts, max_tokens=5, echo=True)
    done = raw.parse()
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert [c.text for c in done.choices] == [p + DEFAULT_REPLY[:5] for p in ("Say it", "CD", "Again, please")]
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (6 + 2 + 13, 15)
    rows = query(server, "SELECT * FROM usage_records WHERE request_id = ?", raw.headers["x-request-id"])
    assert len(rows) == 1 and rows[0]["cost"] == expected_cost(21, 15)
    chunks = list(client.completions.create(model="mock", prompt=prompts, max_tokens=100, stream=True,
                                            stream_options={"include_usage": True}))
    for index in range(3):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(c.text for c in mine) == DEFAULT_REPLY and mine[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 3 * len(DEFAULT_REPLY.encode())
    as_ids = client.completions.create(model="mock", prompt=[[70, 71], [72]], max_tokens=2, echo=True)
    assert [c.text for c in as_ids.choices] == ["CD" + DEFAULT_REPLY[:2], "E" + DEFAULT_REPLY[:2]]


def test_echo_and_stop(client: openai.OpenAI) -> None:
    done = client.completions.create(model="mock", prompt="Q: ", max_tokens=100, echo=True, stop=["mock"])
    assert done.choices[0].text == "Q: This is the " and done.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": {"text": "x"}}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": ["one", ""]}, "prompt"),
    ({"prompt": ["x"] * 17}, "prompt"),
    ({"prompt": [[70], []]}, "prompt"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": [70, 99999]}, "prompt"),
])
def test_bad_input_is_a_400_in_openai_shape_that_costs_nothing(server: AppServer, key: str, body: dict,
                                                              param: str) -> None:
    before = balance_micro(server, "writer")
    records = len(query(server, "SELECT id FROM usage_records"))
    with server.client() as http:
        r = http.post("/v1/completions", json={"model": "mock", **body}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400, r.text
    assert assert_error_shape(r, "openai")["param"] == param
    assert balance_micro(server, "writer") == before
    assert len(query(server, "SELECT id FROM usage_records")) == records


def test_an_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_a_completion_leaves_one_usage_record_and_its_charge(server: AppServer, client: openai.OpenAI) -> None:
    before = balance_micro(server, "writer")
    raw = client.completions.with_raw_response.create(model="mock", prompt="Bill me", max_tokens=7, user="reader-7")
    done = raw.parse()
    rows = query(server, "SELECT * FROM usage_records WHERE request_id = ?", raw.headers["x-request-id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["status"], row["end_user"]) == ("mock", "ok", "reader-7")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (done.usage.prompt_tokens, 7)
    cost = expected_cost(done.usage.prompt_tokens, 7)
    assert row["cost"] == cost and balance_micro(server, "writer") == before - cost
    # The ledger: the hold taken at admission, released, and the one charge.
    entries = query(server, "SELECT kind, amount FROM ledger_entries WHERE request_id = ? ORDER BY id",
                    raw.headers["x-request-id"])
    assert sum(e["amount"] for e in entries if e["kind"] != "hold" and e["kind"] != "release") == -cost
    assert [e["kind"] for e in entries].count("settlement") == 1
    assert query(server, "SELECT COUNT(*) AS n FROM holds WHERE state = 'open'")[0]["n"] == 0


def test_glm_fills_every_mask_of_a_prompt_in_one_call(server: AppServer, client: openai.OpenAI,
                                                      checkpoint: Path) -> None:
    engine = server.app.state.glmaas.registry.get("glm")
    prompt = "ROMEO: But soft, what [MASK] through yonder window [MASK]? It is the east"
    part_a, fills, n_generated = _reference(checkpoint, engine, engine.tokenize(prompt), 40)
    raw = client.completions.with_raw_response.create(model="glm", prompt=prompt, max_tokens=60, temperature=0)
    done = raw.parse()
    choice = done.choices[0]
    assert choice.fills == fills and len(fills) == 2 and choice.finish_reason == "stop"
    before, middle, after = prompt.replace(" [MASK]", "[MASK]").split("[MASK]")
    assert choice.text == before + fills[0] + middle + fills[1] + after
    # The prompt's own tokens (not the [CLS] the engine puts before them); each blank costs its
    # tokens and the [E] that closes it.
    n_prompt = len(engine.tokenize(prompt))
    assert part_a[1:] == engine.tokenize(prompt)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (n_prompt, n_generated)
    rows = query(server, "SELECT * FROM usage_records WHERE request_id = ?", raw.headers["x-request-id"])
    assert len(rows) == 1 and rows[0]["cost"] == expected_cost(n_prompt, n_generated)
    # Cut short by max_tokens: billed exactly what ran, within what admission held.
    raw = client.completions.with_raw_response.create(model="glm", prompt=prompt, max_tokens=2, temperature=0)
    short = raw.parse()
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    rows = query(server, "SELECT * FROM usage_records WHERE request_id = ?", raw.headers["x-request-id"])
    assert len(rows) == 1 and rows[0]["cost"] == expected_cost(n_prompt, 2)
    # Streamed, the chunks carry the same document, and the last one the fills.
    chunks = list(client.completions.create(model="glm", prompt=prompt, max_tokens=60, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].fills == fills


def test_glm_writes_the_middle_between_prompt_and_suffix(server: AppServer, client: openai.OpenAI,
                                                         checkpoint: Path) -> None:
    engine = server.app.state.glmaas.registry.get("glm")
    prefix, suffix = "First Citizen: Before we proceed any further, ", " me speak."
    middle = engine.infill_prompt(engine.tokenize(prefix), engine.tokenize(suffix))
    part_a, fills, n_generated = _reference(checkpoint, engine, middle, 40)
    done = client.completions.create(model="glm", prompt=prefix, suffix=suffix, max_tokens=60, temperature=0)
    assert done.choices[0].text == fills[0] and "fills" not in done.choices[0].model_dump()
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(middle), n_generated)


def test_glm_refuses_a_suffix_beside_masks(server: AppServer, key: str) -> None:
    with server.client() as http:
        r = http.post("/v1/completions", json={"model": "glm", "prompt": "a [MASK] b", "suffix": "c"},
                      headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and assert_error_shape(r, "openai")["param"] == "suffix"


def test_the_route_is_in_the_openapi_schema(server: AppServer) -> None:
    with server.client() as http:
        schema = http.get("/openapi.json").json()
    assert "/v1/completions" in schema["paths"]
    assert "/api/paas/v4/completions" not in schema["paths"]


def test_zhipu_has_no_legacy_completions(server: AppServer, key: str) -> None:
    with server.client() as http:
        r = http.post("/api/paas/v4/completions", json={"model": "mock", "prompt": "x"},
                      headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404 and assert_error_shape(r, "zhipu")


def test_a_prompt_glm_has_no_room_to_continue_is_a_400_streamed_or_not(server: AppServer, key: str) -> None:
    """It fits the window by its own tokens, but not with the [CLS], [gMASK] and [S] GLM adds."""
    engine = server.app.state.glmaas.registry.get("glm")
    ids = [20] * (engine.info.context_length - 1)
    with server.client() as http:
        for stream in (False, True):
            r = http.post("/v1/completions", json={"model": "glm", "prompt": ids, "stream": stream},
                          headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 400 and assert_error_shape(r, "openai")["code"] == "context_length_exceeded"


def test_glm_has_no_chat(server: AppServer, key: str) -> None:
    with server.client() as http:
        r = http.post("/v1/chat/completions", json={"model": "glm", "messages": [{"role": "user", "content": "hi"}]},
                      headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400 and "/v1/completions" in assert_error_shape(r, "openai")["message"]


def test_closing_a_reply_of_several_prompts_stops_every_generation(server: AppServer) -> None:
    """A client that leaves closes the reply's deltas: each prompt's sequence leaves the engine."""
    engine = server.app.state.glmaas.registry.get("glm")
    endless = Sampling(max_tokens=50, logit_bias={engine.special.eop: -100.0, engine.special.eod: -100.0})

    closed: set[int] = set()

    async def tracked(i: int):  # type: ignore[no-untyped-def]
        try:
            async for delta in engine.generate(GenerationRequest(f"leave-{i}", tuple(engine.tokenize("KING")),
                                                                 endless)):
                yield delta
        finally:
            closed.add(i)

    async def run() -> int:
        merged = choices([tracked(i) for i in range(3)])
        await anext(merged)
        await merged.aclose()
        assert closed == {0, 1, 2}  # at once, not when they would have ended
        for _ in range(200):
            if engine.active_sequences() == 0:
                break
            await asyncio.sleep(0.01)
        return engine.active_sequences()

    assert asyncio.run(run()) == 0
