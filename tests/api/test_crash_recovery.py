"""Kill the server with SIGKILL during many concurrent requests, again and again; after restart the
books must be exact: one settlement per admitted request, nothing charged twice, balances equal to
their entries, no hold left open; a stream is billed from its durable progress, and a request that
made nothing durable (non-streamed, or a stream killed before its first token) is released with
nothing charged, not even its prompt."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from glmaas.platform.metering import DURABILITY_STEP
from tests.api.billing_helpers import assert_books_balance, funded_key, price_all, query
from tests.conftest import Server, start_server

# 300 one-byte tokens at 10 ms each: every stream outlives the kill. "plain" is five times slower,
# so a non-streamed request on it never finishes first; "unborn" takes 30 s per token, so a stream
# on it is always killed before its first token.
MODELS = ("--no-default-model", "--model", "stream=mock:delay=0.01,reply=ab,repeat=150",
          "--model", "plain=mock:delay=0.05,reply=ab,repeat=150", "--model", "unborn=mock:delay=30")
STREAMS = 24
NOTHING_DURABLE = 6  # per cycle, of each kind: non-streamed requests, streams before their first token
CYCLES = 4


class Client(threading.Thread):
    """One request, streamed or not; counts the tokens it was sent."""

    def __init__(self, url: str, key: str, request_id: str, *, model: str = "stream",
                 stream: bool = True) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.request_id = url, key, request_id
        self.model, self.stream = model, stream
        self.delivered = 0
        self.done = False

    def run(self) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "go"}], "stream": self.stream,
                "request_id": self.request_id, "max_tokens": 400}
        headers = {"Authorization": f"Bearer {self.key}"}
        url = f"{self.url}/chat/completions"
        try:
            if not self.stream:
                r = httpx.post(url, json=body, timeout=30, headers=headers)
                if r.status_code == 200:
                    self.done = True
                    self.delivered = len(r.json()["choices"][0]["message"]["content"])
                return
            with httpx.stream("POST", url, json=body, timeout=30, headers=headers) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: {"):
                        content = json.loads(line[6:])["choices"][0]["delta"].get("content")
                        self.delivered += len(content or "")
        except httpx.HTTPError:
            pass  # the server was killed under us


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the streams never started"
        time.sleep(0.05)


def released_unbilled(server: Server, clients: list[Client]) -> int:
    """Check that each of `clients` (killed with nothing durable) that was admitted ended with one
    settlement of 0, its hold released in full and a usage record of cost 0; returns how many."""
    admitted = 0
    for c in clients:
        assert not c.done and c.delivered == 0, c.request_id
        if not query(server, "SELECT 1 FROM holds WHERE request_id = ?", c.request_id):
            continue  # never admitted before the kill
        admitted += 1
        settlements = query(server, "SELECT amount FROM ledger_entries WHERE kind = 'settlement' "
                                    "AND request_id = ?", c.request_id)
        (usage,) = query(server, "SELECT * FROM usage_records WHERE request_id = ?", c.request_id)
        assert [s["amount"] for s in settlements] == [0], c.request_id
        assert (usage["status"], usage["completion_tokens"], usage["cost"]) == ("recovered", 0, 0), c.request_id
        assert usage["prompt_tokens"] > 0  # the prompt was there, and is not billed
        (net,) = query(server, "SELECT SUM(amount) AS net FROM ledger_entries WHERE request_id = ?",
                       c.request_id)
        assert net["net"] == 0, c.request_id  # hold + release + settlement
    return admitted


@pytest.mark.slow
def test_books_are_exact_after_repeated_sigkill(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    data_dir = tmp_path / "crash"
    server = start_server(data_dir, *MODELS)
    price_all(server, "stream", "plain", "unborn")
    key = funded_key(server, "crashy", "100")
    clients: list[Client] = []
    nothing_durable: list[Client] = []
    for cycle in range(CYCLES):
        batch = [Client(server.zhipu_url, key, f"c{cycle}-{i}") for i in range(STREAMS)]
        batch += [Client(server.zhipu_url, key, f"plain{cycle}-{i}", model="plain", stream=False) for i in range(NOTHING_DURABLE)]
        batch += [Client(server.zhipu_url, key, f"unborn{cycle}-{i}", model="unborn")
                  for i in range(NOTHING_DURABLE)]
        for c in batch:
            c.start()
        clients += batch[:STREAMS]
        nothing_durable += batch[STREAMS:]
        # Kill once the streams are under way (how long that takes depends on the machine's load),
        # at a random point of their middle.
        wait_for(lambda streams=batch[:STREAMS]: sum(c.delivered > 0 for c in streams) >= STREAMS // 2,
                 timeout=30)
        time.sleep(rng.uniform(0.0, 1.0))
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
            if billed == 0:  # killed before its first token was made durable: released
                assert usage[0]["cost"] == 0 and not c.done, c.request_id
            if c.done:
                assert billed == c.delivered
            else:
                killed_with_output += c.delivered > 0
                # Progress is made durable before delivery, every DURABILITY_STEP tokens.
                assert c.delivered - (DURABILITY_STEP - 1) <= billed <= c.delivered + 1, (
                    c.request_id, c.delivered, billed)
            assert -settlements[0]["amount"] == usage[0]["cost"]
        assert killed_with_output >= STREAMS  # the kills really landed mid-stream
        # Most were admitted before the kill, so the release was really exercised.
        assert released_unbilled(server, nothing_durable) >= len(nothing_durable) // 2
    finally:
        server.stop()
