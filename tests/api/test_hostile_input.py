"""The classes of hostile input found by hand, each a clear 400 in the caller's dialect that costs
nothing (the generated ones are in test_fuzz.py and test_openapi_fuzz.py)."""

from __future__ import annotations

import json

import pytest

from tests.fuzz_helpers import (
    CHAT_BODY,
    TARGETS,
    InProcessApi,
    Target,
    assert_error_shape,
)

GOOD = json.dumps(CHAT_BODY).encode()


def _with(**fields: object) -> bytes:
    return json.dumps({**CHAT_BODY, **fields}).encode()


def _splice(field: bytes, value: bytes) -> bytes:
    return GOOD[:-1] + b', "' + field + b'": ' + value + b"}"


# body → (Zhipu code, the param named, or None)
CASES = {
    "nested 100000 deep": (_splice(b"x", b"[" * 100_000 + b"]" * 100_000), "1210", None),
    "5000-digit number in an ignored field": (_splice(b"ignored", b"1" * 5000), "1210", None),
    "NaN": (_splice(b"temperature", b"NaN"), "1210", None),
    "-Infinity in an ignored field": (_splice(b"ignored", b"-Infinity"), "1210", None),
    "1e400": (_splice(b"top_p", b"1e400"), "1210", None),
    "lone surrogate in content": (GOOD.replace(b'"hi"', b'"\\ud800"'), "1214", "messages.0.content"),
    "reversed surrogates in a name": (
        json.dumps({**CHAT_BODY, "messages": [{"role": "user", "content": "x", "name": "\udc00\ud800"}]}).encode(),
        "1214", "messages.0.name"),
    "surrogate in an ignored key": (_splice(b"\\udfff", b"1"), "1214", "<key>"),
    "UTF-8-encoded surrogate": (GOOD.replace(b'"hi"', b'"\xed\xa0\x80"'), "1214", "messages.0.content"),
    "request_id with CR LF": (_with(request_id="a\r\nSet-Cookie: x=1"), "1214", "request_id"),
    "request_id with NUL": (_with(request_id="id\x00"), "1214", "request_id"),
    "request_id not Latin-1": (_with(request_id="中文"), "1214", "request_id"),
    "request_id too long": (_with(request_id="r" * 129), "1214", "request_id"),
    "user_id with a newline": (_with(user_id="u\nFAKE LOG LINE"), "1214", "user_id"),
    "user with a space": (_with(user="a b"), "1214", "user"),
    "negative seed": (_with(seed=-1), "1214", "seed"),
    "seed past 64 bits": (_with(seed=2**64), "1214", "seed"),
    "max_tokens past 32 bits": (_with(max_tokens=2**31), "1214", "max_tokens"),
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    api = InProcessApi(tmp_path_factory.mktemp("hostile"))
    yield api
    api.assert_still_answers()
    api.close()


# Cases that name a field only the chat routes take (the tokenizer ignores unknown fields).
CHAT_FIELD_CASES = {"user_id with a newline", "user with a space", "negative seed", "seed past 64 bits",
                    "max_tokens past 32 bits"}
# The cases are chat bodies: they run against the routes that take messages.
TARGET_CASES = [pytest.param(target, case, id=f"{case}-{target.id}") for target in TARGETS for case in CASES
                if "messages" in target.valid_body
                and (target.path.endswith("/chat/completions") or case not in CHAT_FIELD_CASES)]


@pytest.mark.parametrize(("target", "case"), TARGET_CASES)
def test_hostile_input_is_a_clear_400_that_costs_nothing(api: InProcessApi, target: Target, case: str) -> None:
    body, zhipu_code, param = CASES[case]
    before = api.books()
    r = api.post(target, body, api.auth())
    assert r.status_code == 400, r.text
    error = assert_error_shape(r, target.dialect)
    if target.dialect == "zhipu":
        assert error["code"] == zhipu_code
    else:
        assert error["param"] == param
    # A refused id never reaches a header.
    assert "x-request-id" not in r.headers
    assert api.books() == before


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_safe_ids_pass_and_are_echoed(api: InProcessApi, target: Target) -> None:
    request_id = f"ok-{TARGETS.index(target)}-{target.dialect}:1.a_b"
    body = {**target.valid_body, "request_id": request_id, "user_id": "someone@example.com"}
    r = api.post(target, json.dumps(body).encode(), api.auth())
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == request_id
