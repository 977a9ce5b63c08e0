"""Hostile bodies and headers, generated, against the chat and embeddings routes of both dialects
in process: never a 5xx, errors in the route's dialect, no charge for a refused request, and the
server still answers."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_helpers import (
    EMBEDDING_TARGETS,
    TARGETS,
    InProcessApi,
    Target,
    assert_answered,
    hostile_bodies,
    hostile_headers,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    api = InProcessApi(tmp_path_factory.mktemp("fuzz"), embeddings=True)
    yield api
    api.assert_still_answers()
    api.close()


@pytest.mark.parametrize("target", TARGETS + EMBEDDING_TARGETS, ids=lambda t: t.id)
def test_hostile_bodies(api: InProcessApi, target: Target) -> None:
    @FUZZ
    @given(body=hostile_bodies(target.valid_body))
    def property(body: bytes) -> None:
        before = api.books()
        assert_answered(api, target, api.post(target, body, api.auth()), before)

    property()
    api.assert_still_answers()


@pytest.mark.parametrize("target", TARGETS + EMBEDDING_TARGETS, ids=lambda t: t.id)
def test_hostile_headers(api: InProcessApi, target: Target) -> None:
    @FUZZ
    @given(headers=hostile_headers(api.key), body=st.just(target.valid_body) | hostile_bodies(target.valid_body))
    def property(headers: dict, body: dict | bytes) -> None:
        before = api.books()
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert_answered(api, target, api.post(target, content, headers), before)

    property()
    api.assert_still_answers()
