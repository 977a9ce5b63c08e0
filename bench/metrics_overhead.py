"""What the operations hooks cost a request: the settlement observer (histograms and counters by
model) and the request record's observer (the requests counter and one log line, with the
`glmaas.requests` logger at INFO writing JSON into a discarded stream), each timed alone over
many calls on objects shaped as a real request leaves them.

    python bench/metrics_overhead.py [--calls 20000]

Prints microseconds per call and the load average; a figure is only worth quoting from a
quiet machine."""

from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
import time
from pathlib import Path

from glmaas.api.metered import RequestRecord
from glmaas.api.operations.request_log import JsonLines
from glmaas.platform.auth import Principal
from glmaas.platform.ledger import Outcome, RequestStatus, Settlement
from tests.inprocess import AppServer


def per_call_us(fn, calls: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    server = AppServer(Path(tempfile.mkdtemp()), "--no-default-model", "--model", "mock=mock")
    try:
        operations = server.app.state.operations
        metrics = operations.metrics
        key = server.create_key()
        with server.client() as client:  # one real request: a ticket and a run to measure with
            r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        ticket = type("Ticket", (), {"model": "mock", "prompt_tokens": 21})()
        outcome = Outcome(status=RequestStatus.OK, cached_tokens=0, completion_tokens=43, finish_reason="stop",
                          queue_ms=0.4, first_token_ms=3.0, total_ms=40.0, prompt_tokens=21)
        settlement = Settlement("r", 640, 43)
        settle_us = per_call_us(lambda: metrics.observe_settlement(ticket, outcome, settlement), args.calls)

        handler = logging.StreamHandler(io.StringIO())
        handler.setFormatter(JsonLines())
        requests_log = logging.getLogger("glmaas.requests")
        requests_log.addHandler(handler)
        requests_log.setLevel(logging.INFO)
        requests_log.propagate = False
        route = next(r for r in server.app.routes if getattr(r, "path", "") == "/v1/chat/completions")
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "app": server.app,
                 "endpoint": route.endpoint, "state": {"request_id": "2026120100000000aaaa", "principal": Principal(
                     key_id="k", account_id="a", allowed_models=None)}}
        record = RequestRecord(scope, model="mock", status=200)
        record.ended = record.started + 0.04
        request_us = per_call_us(lambda: operations.observe(record), args.calls)
        handler.stream = io.StringIO()
        requests_log.setLevel(logging.WARNING)
        quiet_us = per_call_us(lambda: operations.observe(record), args.calls)
    finally:
        server.stop()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min); {args.calls} calls each")
    print(f"settlement observer:                {settle_us:7.1f} us/request")
    print(f"request observer, JSON line logged: {request_us:7.1f} us/request")
    print(f"request observer, line not logged: {quiet_us:7.1f} us/request")


if __name__ == "__main__":
    main()
