"""When the server itself fails: a 500 in the caller's dialect with a request id, logged once with
its traceback, and never billed beyond what was delivered."""

from __future__ import annotations

import json
import logging

import pytest

from glmaas.api.chat.protocol import ChatCompletion
from glmaas.engines.base import Delta
from tests.fuzz_helpers import (
    CHAT_BODY,
    CHAT_TARGETS,
    MODEL,
    TARGETS,
    InProcessApi,
    Target,
    assert_error_shape,
)

TARGET_IDS = [t.id for t in CHAT_TARGETS]


@pytest.fixture
def api(tmp_path):  # type: ignore[no-untyped-def]
    api = InProcessApi(tmp_path)
    yield api
    api.close()


def _usage(api: InProcessApi, request_id: str) -> dict:
    from sqlalchemy import text

    with api.state.db.session() as session:
        rows = session.execute(text("SELECT status, completion_tokens, cost FROM usage_records "
                                    "WHERE request_id = :r"), {"r": request_id}).mappings().all()
    assert len(rows) == 1, rows
    return dict(rows[0])


def _unhandled(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("target", CHAT_TARGETS, ids=TARGET_IDS)
def test_a_failure_between_generation_and_the_response_is_a_dialect_500_and_free(
        api: InProcessApi, target: Target, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # The reply is generated in full, then serialising it fails: no response has started.
    def broken(self, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("serialisation bug")

    monkeypatch.setattr(ChatCompletion, "model_dump_json", broken)
    before = api.books()
    request_id = f"unsent-{target.dialect}"
    r = api.post(target, json.dumps({**CHAT_BODY, "request_id": request_id}).encode(), api.auth())
    assert r.status_code == 500
    error = assert_error_shape(r, target.dialect)
    assert r.headers["x-request-id"] == request_id and request_id in error["message"]
    assert "serialisation bug" not in r.text
    usage = _usage(api, request_id)
    assert usage["status"] == "error" and usage["cost"] == 0
    assert usage["completion_tokens"] > 0  # it was generated, and still not billed
    after = api.books()
    assert after.balance == before.balance and after.open_holds == 0
    logged = _unhandled(caplog)
    assert len(logged) == 1 and request_id in logged[0].getMessage()
    assert "serialisation bug" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_a_failure_before_admission_gets_a_request_id_and_costs_nothing(
        api: InProcessApi, target: Target, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    engine = api.state.registry.get(MODEL)

    def broken(text: str, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("tokenizer bug")

    monkeypatch.setattr(engine, "tokenize", broken)
    before = api.books()
    r = api.post(target, json.dumps(target.valid_body).encode(), api.auth())
    assert r.status_code == 500
    error = assert_error_shape(r, target.dialect)
    assert r.headers["x-request-id"] in error["message"]
    assert api.books() == before
    assert len(_unhandled(caplog)) == 1


def test_a_delivered_reply_is_billed(api: InProcessApi) -> None:
    before = api.books()
    r = api.post(CHAT_TARGETS[0], json.dumps({**CHAT_BODY, "request_id": "delivered-1"}).encode(), api.auth())
    assert r.status_code == 200
    usage = _usage(api, "delivered-1")
    assert usage["status"] == "ok" and usage["cost"] > 0
    assert api.books().balance == before.balance - usage["cost"]


def _stream(api: InProcessApi, target: Target, request_id: str) -> list[str]:
    body = {**CHAT_BODY, "max_tokens": 30, "stream": True, "request_id": request_id}
    with api.client.stream("POST", target.path, content=json.dumps(body).encode(), headers=api.auth()) as r:
        assert r.status_code == 200
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("target", CHAT_TARGETS, ids=TARGET_IDS)
def test_a_server_fault_mid_stream_is_told_in_band_and_billed_as_produced(
        api: InProcessApi, target: Target, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    engine = api.state.registry.get(MODEL)
    generate = engine.generate

    async def fails_after_three(request):  # type: ignore[no-untyped-def]
        produced = 0
        async for delta in generate(request):
            yield delta
            produced += 1
            if produced == 3:
                raise RuntimeError("a bug, not an engine fault")
        yield Delta((), "")  # never reached

    monkeypatch.setattr(engine, "generate", fails_after_three)
    request_id = f"broken-stream-{target.dialect}"
    events = _stream(api, target, request_id)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    if target.dialect == "zhipu":
        # As the Zhipu platform ends a stream that failed in inference: a finish reason, with usage.
        assert last["choices"][0]["finish_reason"] == "network_error"
        assert last["usage"]["completion_tokens"] == 3
    else:
        assert last["error"]["type"] == "server_error" and request_id in last["error"]["message"]
    usage = _usage(api, request_id)
    assert (usage["status"], usage["completion_tokens"]) == ("error", 3)
    assert usage["cost"] > 0
    assert api.books().open_holds == 0
    assert len(_unhandled(caplog)) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_reply_whose_status_line_cannot_be_sent_is_free(api: InProcessApi, stream: bool) -> None:
    # As a server reports a socket that is gone: sending the status line raises.
    import anyio

    request_id = f"no-status-line-{stream}"
    body = json.dumps({**CHAT_BODY, "stream": stream, "request_id": request_id}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": CHAT_TARGETS[1].path, "raw_path": CHAT_TARGETS[1].path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
             "headers": [(b"authorization", f"Bearer {api.key}".encode()), (b"content-type", b"application/json")]}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            raise OSError("connection reset by peer")

    before = api.books()
    anyio.run(api.app, scope, receive, send)
    usage = _usage(api, request_id)
    assert usage["cost"] == 0 and usage["status"] in ("error", "aborted")
    assert api.books().balance == before.balance and api.books().open_holds == 0


@pytest.mark.parametrize("target", CHAT_TARGETS, ids=TARGET_IDS)
def test_a_fault_in_serialising_a_chunk_is_an_error_billed_as_produced(
        api: InProcessApi, target: Target, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from glmaas.api.chat import serving

    real = serving.DeltaMessage
    made = 0

    def fails_on_the_fourth(**fields):  # type: ignore[no-untyped-def]
        nonlocal made
        made += 1
        if made == 4 and fields.get("content"):
            raise RuntimeError("a serialisation bug")
        return real(**fields)

    monkeypatch.setattr(serving, "DeltaMessage", fails_on_the_fourth)
    request_id = f"broken-chunk-{target.dialect}"
    events = _stream(api, target, request_id)
    assert events[-1] == "[DONE]"
    usage = _usage(api, request_id)
    assert usage["status"] == "error" and usage["cost"] > 0
    assert api.books().open_holds == 0
    assert len(_unhandled(caplog)) == 1
