"""One log line per request from a `glmaas serve` process with `--log-format json`: every line is
a JSON object, a request's line holds its fields, and neither the key's secret nor the prompt or
the output is ever in the log — unless `--log-content` asks for the bodies."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from glmaas.api.operations.request_log import JsonLines, TextLines
from glmaas.benchmarks.harness import free_port
from tests.conftest import Server, start_server

PROMPT = "Tell me about the quokka-zeppelin-7731 conjecture"
FIELDS = {"request_id", "method", "endpoint", "dialect", "account", "key_id", "model", "status", "error",
          "prompt_tokens", "cached_tokens", "completion_tokens", "queue_ms", "first_token_ms", "total_ms"}


def _serve_and_ask(data_dir: Path, *options: str) -> tuple[Server, str, list[httpx.Response]]:
    server = start_server(data_dir, "--no-default-model", "--model", "mock=mock", "--log-format", "json", *options)
    key = server.create_key("--name", "logged")
    body = {"model": "mock", "messages": [{"role": "user", "content": PROMPT}]}
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30) as client:
        answers = [client.post(f"{server.openai_url}/chat/completions", json=body, headers=auth),
                   client.post(f"{server.zhipu_url}/chat/completions", json={**body, "stream": True}, headers=auth),
                   client.post(f"{server.openai_url}/chat/completions", json={**body, "model": "nope"}, headers=auth),
                   client.post(f"{server.zhipu_url}/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}x"})]
    return server, key, answers


def _stopped_log(server: Server) -> str:
    server.proc.terminate()
    assert server.proc.wait(30) == 0
    return server.log.read_text()


def test_json_lines_hold_each_request_and_never_the_secret_or_the_text(tmp_path: Path) -> None:
    metrics_port = free_port()
    server, key, answers = _serve_and_ask(tmp_path, "--metrics-port", str(metrics_port))
    try:
        # --metrics-port serves the same metrics without a credential (on loopback).
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scraped.status_code == 200
        names = {f.name for f in text_string_to_metric_families(scraped.text)}
        assert {"glmaas_requests", "glmaas_time_to_first_token_seconds"} <= names
        log = _stopped_log(server)
    finally:
        server.stop()
    assert [r.status_code for r in answers] == [200, 200, 404, 401]
    key_id, secret = key.split(".", 1)
    assert secret not in log and key not in log
    assert PROMPT not in log and "quokka" not in log
    reply = answers[0].json()["choices"][0]["message"]["content"]
    assert reply[:20] not in log

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is JSON
    requests = [line for line in lines if line["logger"] == "glmaas.requests"]
    assert len(requests) == 4 and all(FIELDS <= line.keys() for line in requests)
    # A line is written once its response has gone out: the client may be on its next request by then.
    by_id = {line["request_id"]: line for line in requests}
    whole, streamed = (by_id[answer.headers["x-request-id"]] for answer in answers[:2])
    unknown, forged = (next(line for line in requests if line["status"] == status) for status in (404, 401))
    assert (whole["dialect"], whole["endpoint"], whole["model"], whole["status"]) == (
        "openai", "/v1/chat/completions", "mock", 200)
    assert whole["key_id"] == key_id and whole["account"] and whole["error"] is None
    usage = answers[0].json()["usage"]
    assert (whole["prompt_tokens"], whole["completion_tokens"]) == (usage["prompt_tokens"],
                                                                    usage["completion_tokens"])
    assert whole["total_ms"] >= whole["first_token_ms"] >= whole["queue_ms"] >= 0
    assert streamed["dialect"] == "zhipu" and streamed["completion_tokens"] == usage["completion_tokens"]
    assert (unknown["status"], unknown["error"], unknown["model"]) == (404, "model_not_found", None)
    assert (forged["status"], forged["error"], forged["key_id"]) == (401, "auth_invalid", None)


def test_log_content_puts_the_bodies_in_the_lines(tmp_path: Path) -> None:
    server, _key, answers = _serve_and_ask(tmp_path, "--log-content")
    try:
        log = _stopped_log(server)
    finally:
        server.stop()
    lines = [json.loads(line) for line in log.splitlines() if '"glmaas.requests"' in line]
    whole = next(line for line in lines if line["request_id"] == answers[0].headers["x-request-id"])
    assert PROMPT in whole["request_body"]
    assert answers[0].json()["choices"][0]["message"]["content"] in json.loads(whole["response_body"])[
        "choices"][0]["message"]["content"]


# The formatters format each second's time once; a line must read as logging's own formatter
# writes it, whatever the order of the records' times.
@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=6))
def test_text_lines_read_as_logging_writes_them(times: list[float]) -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, theirs = TextLines(fmt), logging.Formatter(fmt)
    for created in times:
        record = _record_at(created)
        assert ours.format(record) == theirs.format(record)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=6))
def test_json_lines_time_is_utc_to_the_millisecond(times: list[float]) -> None:
    formatter = JsonLines()
    for created in times:
        record = _record_at(created)
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(created))) + f".{int(record.msecs):03d}Z"
        assert json.loads(formatter.format(record))["time"] == expected


def _record_at(created: float) -> logging.LogRecord:
    record = logging.LogRecord("glmaas.test", logging.INFO, "", 0, "at %s", (created,), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record
