"""The end user a request names (`user_id` in Zhipu's dialect, `user` in OpenAI's) is written on
its usage record, for chat (streamed or not) and embeddings; a request that names none has none."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.fuzz_helpers import CHAT_BODY, EMBEDDING_BODY, EMBEDDING_TARGETS, TARGETS, InProcessApi


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    api = InProcessApi(tmp_path_factory.mktemp("end-user"), embeddings=True)
    yield api
    api.close()


def _end_user(api: InProcessApi, request_id: str) -> str | None:
    with api.state.db.session() as session:
        rows = session.execute(text("SELECT end_user FROM usage_records WHERE request_id = :r"),
                               {"r": request_id}).scalars().all()
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("target", "field"), [(TARGETS[0], "user"), (TARGETS[1], "user_id")],
                         ids=["openai-user", "zhipu-user_id"])
def test_a_chat_request_records_its_end_user(api: InProcessApi, target, field: str, stream: bool) -> None:
    request_id = f"end-user-{field}-{stream}"
    body = {**CHAT_BODY, "request_id": request_id, field: f"customer-{field}@example.com", "stream": stream}
    r = api.post(target, json.dumps(body).encode(), api.auth())
    assert r.status_code == 200, r.text
    assert _end_user(api, request_id) == f"customer-{field}@example.com"


@pytest.mark.parametrize("target", EMBEDDING_TARGETS, ids=lambda t: t.id)
def test_an_embedding_request_records_its_end_user(api: InProcessApi, target) -> None:
    request_id = f"end-user-embedding-{target.dialect}"
    body = {**EMBEDDING_BODY, "request_id": request_id, "user": "customer-42"}
    r = api.post(target, json.dumps(body).encode(), api.auth())
    assert r.status_code == 200, r.text
    assert _end_user(api, request_id) == "customer-42"


def test_a_request_that_names_no_end_user_records_none(api: InProcessApi) -> None:
    r = api.post(TARGETS[0], json.dumps({**CHAT_BODY, "request_id": "no-end-user"}).encode(), api.auth())
    assert r.status_code == 200, r.text
    assert _end_user(api, "no-end-user") is None
