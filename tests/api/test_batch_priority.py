"""Interactive traffic first: batch lines take at most their share of a model's slots, and none
starts while interactive requests hold every slot."""

from __future__ import annotations

import io
import threading
import time

import httpx
import openai

from tests.api.batch_helpers import batch_file, chat_line, wait_until
from tests.api.billing_helpers import query
from tests.conftest import start_server

# The mock engine reports no slot count: it is taken to have 4 (glmaas.jobs.gate.DEFAULT_SLOTS).
MODELS = ("--no-default-model", "--model", "slow=mock:delay=0.05")
SLOTS = 4


def open_holds(server) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Open (interactive, batch) requests, read in one snapshot."""
    row = query(server, "SELECT COALESCE(SUM(request_id NOT LIKE 'batch_%'), 0) AS i, "
                        "COALESCE(SUM(request_id LIKE 'batch_%'), 0) AS b FROM holds WHERE state = 'open'")[0]
    return row["i"], row["b"]


def test_batch_lines_wait_for_interactive_requests_and_keep_to_their_share(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(tmp_path / "priority", *MODELS, "--batch-workers", "6", "--batch-slot-share", "0.5")
    try:
        key = server.create_key("--name", "priority")
        client = openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)

        def interactive() -> None:
            httpx.post(f"{server.openai_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "slow", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)

        threads = [threading.Thread(target=interactive) for _ in range(SLOTS)]
        for t in threads:
            t.start()
        wait_until(lambda: open_holds(server)[0], lambda n: n == SLOTS, timeout=10)
        lines = [chat_line(f"l{i}", model="slow", max_tokens=10) for i in range(8)]
        uploaded = client.files.create(file=("in.jsonl", io.BytesIO(batch_file(lines))), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        most = 0
        while any(t.is_alive() for t in threads):
            interactive_open, batch_open = open_holds(server)
            if interactive_open == SLOTS:
                assert batch_open == 0  # every slot is interactive: no line may start
            most = max(most, batch_open)
            time.sleep(0.01)
        while client.batches.retrieve(batch.id).status == "in_progress":
            most = max(most, open_holds(server)[1])
            time.sleep(0.01)
        assert client.batches.retrieve(batch.id).request_counts.completed == 8
        assert 1 <= most <= SLOTS // 2  # half the slots, though six workers were free
    finally:
        server.stop()
