"""One shared helper for fuzzing the API, for every route: an in-process app with a funded key on
a priced mock model, Hypothesis strategies of hostile JSON bodies and headers, and the property
every answer must hold.

A route joins the fuzzing by a `Target` (its path, dialect and one valid body) in `TARGETS`: the
strategies mutate that body, and `assert_answered` checks the answer. Routes described in
`/openapi.json` are also fuzzed from their schema (`tests/api/test_openapi_fuzz.py`).

The property: no 5xx; an error is a JSON body in the route's dialect; a refused request changes
nothing in the books (no hold, no ledger entry, no usage record); an admitted one leaves no hold
open. The server still answering afterwards is each test's last step
(`InProcessApi.assert_still_answers`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from hypothesis import strategies as st
from sqlalchemy import text

from glmaas.engines.registry import default_embedding_folder
from tests.inprocess import AppServer

# The mock engine under a price, so that any charge shows in the books.
PRICES = {"input": "2", "cached_input": "1", "output": "10"}
MODEL = "mock"


@dataclass(frozen=True)
class Target:
    """A route under fuzz: where it is, which dialect it speaks, and a body it accepts."""

    path: str
    dialect: str  # "openai" or "zhipu"
    valid_body: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.dialect}:{self.path}"


CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CHAT_TOOLS_BODY = {**CHAT_BODY, "messages": [
    {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
    "tools": [WEATHER_TOOL], "tool_choice": "auto", "parallel_tool_calls": False,
    "thinking": {"type": "disabled"}, "tool_stream": True}
TOKENIZER_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL]}
COMPLETION_BODY = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stop": ["x"], "logprobs": 1}
TARGETS = [
    Target("/v1/chat/completions", "openai", CHAT_BODY),
    Target("/api/paas/v4/chat/completions", "zhipu", CHAT_BODY),
    Target("/api/paas/v4/chat/completions", "zhipu", CHAT_TOOLS_BODY),
    Target("/api/paas/v4/tokenizer", "zhipu", TOKENIZER_BODY),
    Target("/v1/completions", "openai", COMPLETION_BODY),
]
# The plain chat route of each dialect: the routes that generate, for tests that break generation.
CHAT_TARGETS = TARGETS[:2]
# The default embedding model, served by `InProcessApi(..., embeddings=True)` only (it loads a model).
EMBEDDING_MODEL = "minilm"
EMBEDDING_BODY = {"model": EMBEDDING_MODEL, "input": "hi"}
EMBEDDING_TARGETS = [
    Target("/v1/embeddings", "openai", EMBEDDING_BODY),
    Target("/api/paas/v4/embeddings", "zhipu", EMBEDDING_BODY),
]


@dataclass(frozen=True)
class Books:
    """What a request can change in the books."""

    ledger_entries: int
    usage_records: int
    open_holds: int
    balance: int


class InProcessApi:
    """The app in this process (`tests.inprocess.AppServer`, no server process) on a fresh SQLite
    file in `data_dir`, with the mock engine (and with `embeddings` the default embedding model)
    priced and one funded key."""

    def __init__(self, data_dir: Path, *, embeddings: bool = False) -> None:
        models = ["--model", f"{MODEL}=mock"]
        if embeddings:
            models += ["--model", f"{EMBEDDING_MODEL}=sentence:{default_embedding_folder()}"]
        self.server = AppServer(data_dir, "--no-default-model", *models)
        self.targets = TARGETS + (EMBEDDING_TARGETS if embeddings else [])
        self.app = self.server.app
        self.state = self.app.state.glmaas
        self.client = self.server.client(timeout=30)
        admin = {"Authorization": f"Bearer {self.state.admin_token}"}
        for model in {target.valid_body["model"] for target in self.targets}:
            assert self.client.put(f"/admin/prices/{model}", json=PRICES, headers=admin).status_code == 200
        assert self.client.post("/admin/accounts", json={"name": "fuzz"}, headers=admin).status_code == 201
        assert self.client.post("/admin/accounts/fuzz/topup", json={"amount": "1000"},
                                headers=admin).status_code == 200
        r = self.client.post("/admin/keys", json={"account": "fuzz"}, headers=admin)
        self.key: str = r.json()["key"]

    def books(self) -> Books:
        with self.state.db.session() as session:
            one = lambda sql: session.execute(text(sql)).scalar_one()  # noqa: E731
            return Books(one("SELECT COUNT(*) FROM ledger_entries"), one("SELECT COUNT(*) FROM usage_records"),
                         one("SELECT COUNT(*) FROM holds WHERE state = 'open'"),
                         one("SELECT balance FROM accounts WHERE name = 'fuzz'"))

    def post(self, target: Target, content: bytes, headers: dict[str, Any]) -> httpx.Response:
        return self.client.post(target.path, content=content, headers=headers)

    def assert_still_answers(self) -> None:
        for target in self.targets:
            r = self.post(target, json.dumps(target.valid_body).encode(), self.auth())
            assert r.status_code == 200, r.text

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def assert_error_shape(response: httpx.Response, dialect: str) -> dict:
    """The error body of `response` in `dialect`'s shape (no stack trace, no plain text)."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    if dialect == "zhipu":
        assert set(error) == {"code", "message"}, error
        assert isinstance(error["code"], str) and error["code"].isdigit(), error
    else:
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["type"], str)
    assert isinstance(error["message"], str) and "Traceback" not in error["message"]
    return error


def assert_answered(api: InProcessApi, target: Target, response: httpx.Response, before: Books) -> None:
    """The property every answer to a hostile request holds."""
    assert response.status_code < 500, (response.status_code, response.text)
    after = api.books()
    assert after.open_holds == 0, "a request left its hold open"
    if response.status_code >= 400:
        assert_error_shape(response, target.dialect)
        assert after == before, f"a refused request ({response.status_code}) changed the books"
    else:
        # Admitted (or nothing to meter): at most one settlement, and never a credit.
        assert after.usage_records - before.usage_records <= 1
        assert after.balance <= before.balance


# -- strategies ------------------------------------------------------------------------------------

# Fixed once: a strategy must draw the same way each time Hypothesis replays it.
NOW_MS = int(time.time() * 1000)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
# Text as an attacker writes it: every code point, lone surrogates and controls included.
HOSTILE_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=8), SURROGATE, st.text(max_size=8))
HOSTILE_NUMBERS = (st.integers(-(10**120), 10**120) | st.sampled_from([2**31, 2**63, 2**64, -1, 0, -(2**63)])
                   | st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]))
HOSTILE_SCALARS = st.none() | st.booleans() | HOSTILE_NUMBERS | HOSTILE_TEXT
HOSTILE_VALUES = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12)

# Raw fragments that break a parser's assumptions, spliced anywhere into a valid body's text.
FRAGMENTS = st.sampled_from([
    b"NaN", b"-Infinity", b"Infinity", b"1e999", b"-1e400", b"1" * 5000, b"0." + b"3" * 400,
    b"[" * 3000, b"{\"a\":" * 2000, b'"\\ud800"', b'"\\udfff\\ud800"', b"\x00", b"\xff\xfe", b"\xed\xa0\x80",
    b"\xef\xbb\xbf", b'"\\u0000"', b"\\", b'"', b",", b"}", b"]", b"true", b"null", b" " * 100,
]) | st.binary(max_size=20)


def _dumps(value: Any) -> bytes:
    # allow_nan: NaN and Infinity go on the wire as Python writes them, as a careless client would.
    return json.dumps(value, allow_nan=True).encode()


def _paths(body: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside `body`, the top level's fields included."""
    paths = [prefix] if prefix else []
    if isinstance(body, dict):
        for key, value in body.items():
            paths += _paths(value, (*prefix, key))
    elif isinstance(body, list):
        for i, value in enumerate(body):
            paths += _paths(value, (*prefix, i))
    return paths


def _replace(body: Any, path: tuple, value: Any) -> Any:
    body = json.loads(json.dumps(body))
    node = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return body


@st.composite
def hostile_bodies(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """A body close enough to `valid` to reach deep into the route, with something hostile in it."""
    # Fields the platform reads that the valid body may not carry.
    fields = _paths(valid) + [(name,) for name in (
        "request_id", "user_id", "user", "seed", "max_tokens", "temperature", "top_p", "stop", "stream",
        "n", "tools", "do_sample", "stream_options")]
    how = draw(st.sampled_from(["replace", "add", "splice", "deep", "ids", "raw"]))
    if how == "replace":
        return _dumps(_replace(valid, draw(st.sampled_from(fields)), draw(HOSTILE_VALUES)))
    if how == "add":
        return _dumps({**valid, draw(HOSTILE_TEXT): draw(HOSTILE_VALUES)})
    if how == "splice":
        raw = _dumps(valid)
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(FRAGMENTS) + raw[at:]
    if how == "deep":
        depth = draw(st.integers(1, 5000))
        return _dumps(valid)[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    if how == "ids":
        field = draw(st.sampled_from(["request_id", "user_id", "user"]))
        value = draw(HOSTILE_TEXT | st.sampled_from(["a\r\nSet-Cookie: x=1", "id\x00", "中文", "", "x" * 300]))
        return _dumps({**valid, field: value})
    return draw(st.binary(max_size=200) | HOSTILE_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))


def _signed(key: str, claims: dict[str, Any]) -> str:
    key_id, secret = key.split(".")
    return jwt.encode({"api_key": key_id, **claims}, secret, algorithm="HS256",
                      headers={"sign_type": "SIGN"})


@st.composite
def hostile_headers(draw: st.DrawFn, key: str) -> dict[str, Any]:
    """Headers of a request with `key`: a credential that may be mangled, a signed JWT whose
    claims may be absurd, and any content type or extra header, as raw bytes."""
    # Absurd values, and times near now in milliseconds or seconds (valid, expired, far ahead).
    claim = st.one_of(HOSTILE_NUMBERS, HOSTILE_TEXT, st.none(), st.lists(st.integers(), max_size=2),
                      st.integers(NOW_MS - 10**9, NOW_MS + 10**9), st.integers(NOW_MS // 1000 - 10**6, NOW_MS))
    credential = draw(st.one_of(
        st.just(f"Bearer {key}"),
        st.just(key),
        st.builds(lambda exp, ts: "Bearer " + _signed(key, {"exp": exp, "timestamp": ts}), claim, claim),
        st.builds(lambda t: "Bearer " + t, HOSTILE_TEXT),
        st.binary(max_size=60),
        st.just("Bearer " + "A" * 10_000),
    ))
    headers: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # now and then no credential at all
        headers["Authorization"] = (credential.encode("utf-8", "surrogatepass") if isinstance(credential, str)
                                    else credential)
    headers["Content-Type"] = draw(st.sampled_from(
        [b"application/json", b"text/plain", b"application/json; charset=utf-16", b"", b"\xff\x00"]))
    extra = draw(st.dictionaries(st.sampled_from(["x-request-id", "accept", "x-forwarded-for", "cookie"]),
                                 st.binary(max_size=40), max_size=2))
    return {**headers, **extra}
