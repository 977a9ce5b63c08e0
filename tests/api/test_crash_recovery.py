"""Kill the server with SIGKILL during many concurrent streams, again and again; after restart the
books must be exact: one settlement per request that delivered anything, nothing charged twice,
balances equal to their entries, no hold left open."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import httpx
import pytest

from glmaas.platform.metering import DURABILITY_STEP
from tests.api.billing_helpers import assert_books_balance, funded_key, price_all, query
from tests.conftest import start_server

# 300 one-byte tokens at 10 ms each: every stream outlives the kill.
MODELS = ("--no-default-model", "--model", "stream=mock:delay=0.01,reply=ab,repeat=150")
STREAMS = 24
CYCLES = 4


class Client(threading.Thread):
    """One streaming request; counts the tokens it was sent."""

    def __init__(self, url: str, key: str, request_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.request_id = url, key, request_id
        self.delivered = 0
        self.done = False

    def run(self) -> None:
        body = {"model": "stream", "messages": [{"role": "user", "content": "go"}], "stream": True,
                "request_id": self.request_id, "max_tokens": 400}
        try:
            with httpx.stream("POST", f"{self.url}/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {self.key}"}) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: {"):
                        content = json.loads(line[6:])["choices"][0]["delta"].get("content")
                        self.delivered += len(content or "")
        except httpx.HTTPError:
            pass  # the server was killed under us


@pytest.mark.slow
def test_books_are_exact_after_repeated_sigkill(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    data_dir = tmp_path / "crash"
    server = start_server(data_dir, *MODELS)
    price_all(server, "stream")
    key = funded_key(server, "crashy", "100")
    clients: list[Client] = []
    for cycle in range(CYCLES):
        batch = [Client(server.zhipu_url, key, f"c{cycle}-{i}") for i in range(STREAMS)]
        for c in batch:
            c.start()
        clients += batch
        time.sleep(rng.uniform(0.8, 2.0))
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        for c in batch:
            c.join(10)
        server = start_server(data_dir, *MODELS)  # recovery runs before it answers
    # One last batch that runs to completion.
    batch = [Client(server.zhipu_url, key, f"final-{i}") for i in range(STREAMS)]
    for c in batch:
        c.start()
    for c in batch:
        c.join(30)
    clients += batch
    try:
        assert all(c.done for c in batch)
        assert not query(server, "SELECT * FROM holds WHERE state = 'open'")
        assert_books_balance(server)
        killed_with_output = 0
        for c in clients:
            settlements = query(server, "SELECT amount FROM ledger_entries WHERE kind = 'settlement' "
                                        "AND request_id = ?", c.request_id)
            usage = query(server, "SELECT * FROM usage_records WHERE request_id = ?", c.request_id)
            if c.delivered == 0 and not settlements:
                continue  # never admitted before the kill
            assert len(settlements) == 1 and len(usage) == 1, c.request_id
            billed = usage[0]["completion_tokens"]
            if c.done:
                assert billed == c.delivered
            else:
                killed_with_output += c.delivered > 0
                # Progress is made durable before delivery, every DURABILITY_STEP tokens.
                assert c.delivered - (DURABILITY_STEP - 1) <= billed <= c.delivered + 1, (
                    c.request_id, c.delivered, billed)
            assert -settlements[0]["amount"] == usage[0]["cost"]
        assert killed_with_output >= STREAMS  # the kills really landed mid-stream
    finally:
        server.stop()
