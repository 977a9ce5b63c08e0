"""Graceful shutdown of a `glmaas serve` process: SIGTERM during streams.

The drain lets streams in flight finish (each settled once) while readiness fails and new
requests get a 503 with `Retry-After`; when the drain time runs out, what still runs ends as
after an engine fault, billed as produced. Either way the process exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.api.billing_helpers import assert_books_balance, funded_key, price_all, query
from tests.conftest import Server, start_server

STREAMS = 10


def _start(data_dir: Path, *options: str) -> tuple[Server, str]:
    # ~40 tokens at 0.1 s each: a stream lasts about 4 s, time enough to probe the draining server.
    server = start_server(data_dir, "--no-default-model", "--model", "slow=mock:delay=0.1",
                          "--model", "long=mock:delay=0.06,repeat=20", *options)
    price_all(server, "slow", "long")
    return server, funded_key(server, "drained", "100")


class Stream(threading.Thread):
    """One streamed chat request, read to its end: its request id, content and last events."""

    def __init__(self, server: Server, key: str, model: str, dialect: str, started: threading.Semaphore) -> None:
        super().__init__()
        self.server, self.key, self.model, self.dialect, self.started = server, key, model, dialect, started
        self.request_id = ""
        self.content = ""
        self.events: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        url = self.server.zhipu_url if self.dialect == "zhipu" else self.server.openai_url
        body = {"model": self.model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        try:
            with httpx.Client(timeout=60) as client, client.stream(
                    "POST", f"{url}/chat/completions", json=body,
                    headers={"Authorization": f"Bearer {self.key}"}) as r:
                assert r.status_code == 200, r.read()
                self.request_id = r.headers["x-request-id"]
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    self.events.append(line[6:])
                    if len(self.events) == 2:
                        self.started.release()  # the stream has produced a token
                    if line[6:] != "[DONE]":
                        for choice in json.loads(line[6:]).get("choices", []):
                            self.content += choice["delta"].get("content") or ""
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.started.release()


def _streams_under_way(server: Server, key: str, model: str) -> list[Stream]:
    started = threading.Semaphore(0)
    streams = [Stream(server, key, model, ("openai", "zhipu")[i % 2], started) for i in range(STREAMS)]
    for stream in streams:
        stream.start()
    for _ in streams:
        assert started.acquire(timeout=30)
    return streams


def _one_settlement_each(server: Server, streams: list[Stream]) -> list[dict]:
    records = []
    for stream in streams:
        rows = query(server, "SELECT * FROM usage_records WHERE request_id = ?", stream.request_id)
        assert len(rows) == 1, f"{stream.request_id}: {len(rows)} usage records"
        settlements = query(server, "SELECT amount FROM ledger_entries WHERE request_id = ? AND kind = 'settlement'",
                            stream.request_id)
        assert len(settlements) == 1, f"{stream.request_id}: {len(settlements)} settlements"
        records.append(dict(rows[0]))
    assert not query(server, "SELECT request_id FROM holds WHERE state = 'open'")
    assert_books_balance(server)
    return records


def test_sigterm_lets_every_stream_finish_and_exits_0(tmp_path: Path) -> None:
    server, key = _start(tmp_path)
    try:
        with httpx.Client(timeout=30) as client:
            whole = client.post(f"{server.openai_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]})
        reply = whole.json()["choices"][0]["message"]["content"]
        streams = _streams_under_way(server, key, "slow")
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with httpx.Client(timeout=10) as client:
            ready = client.get(f"{server.base_url}/readyz")
            late = client.post(f"{server.zhipu_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                               json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]})
        for stream in streams:
            stream.join(60)
        code = server.proc.wait(30)
    finally:
        server.stop()
    assert ready.status_code == 503 and ready.json()["failing"] == ["shutdown"]
    assert late.status_code == 503 and late.headers["retry-after"] == "1" and late.json()["error"]["code"] == "1305"
    for stream in streams:
        assert stream.error is None, stream.error
        assert stream.content == reply and stream.events[-1] == "[DONE]"
    records = _one_settlement_each(server, streams)
    assert {r["status"] for r in records} == {"ok"}
    assert code == 0, server.log_tail()


def test_streams_past_the_drain_timeout_end_as_after_an_engine_fault(tmp_path: Path) -> None:
    server, key = _start(tmp_path, "--drain-timeout", "1")
    whole: list[httpx.Response] = []

    def ask_whole() -> None:
        with httpx.Client(timeout=60) as client:
            whole.append(client.post(f"{server.openai_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                     json={"model": "long", "messages": [{"role": "user", "content": "hi"}]}))

    try:
        waiting = threading.Thread(target=ask_whole)
        waiting.start()
        streams = _streams_under_way(server, key, "long")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for stream in [*streams, waiting]:
            stream.join(60)
        code = server.proc.wait(30)
        took = time.monotonic() - signalled
    finally:
        server.stop()
    # A reply not streamed gets the engine fault's 500, says that sending it again can help, and
    # costs nothing (nothing was delivered).
    (cut,) = whole
    assert cut.status_code == 500 and cut.headers["x-should-retry"] == "true"
    (record,) = query(server, "SELECT status, cost FROM usage_records WHERE request_id = ?",
                      cut.headers["x-request-id"])
    assert (record["status"], record["cost"]) == ("error", 0)
    for stream in streams:
        assert stream.error is None, stream.error
        assert stream.events[-1] == "[DONE]"
        last = json.loads(stream.events[-2])
        if stream.dialect == "openai":
            assert last["error"]["type"] == "server_error"
        else:
            assert last["choices"][0]["finish_reason"] == "network_error"
    records = _one_settlement_each(server, streams)
    for record in records:
        # Billed as produced: the tokens sent before the cut, not the whole reply.
        assert record["status"] == "error" and 0 < record["completion_tokens"] < 20 * 40
        assert record["cost"] > 0
    assert code == 0, server.log_tail()
    # The drain (1 s) and the cut, not the 50 s the streams would have taken.
    assert took < 15


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
