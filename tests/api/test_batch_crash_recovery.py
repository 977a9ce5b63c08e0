"""Kill a replica with SIGKILL while it runs a batch, twice; after the restarts every line ends
exactly once, in the output or the error file, and is billed exactly once: the attempt a kill cut
short is settled unbilled by recovery, and the attempt that finished wrote its result in the
transaction of its settlement."""

from __future__ import annotations

import collections
import io
import os
import signal

import openai
import pytest

from tests.api.batch_helpers import batch_file, chat_line, jsonl, wait_until
from tests.api.billing_helpers import assert_books_balance, funded_key, price_all, query
from tests.conftest import start_server

# 40 one-byte tokens at 20 ms: a line runs for about 0.8 s, so a kill always finds lines running.
MODELS = ("--no-default-model", "--model", "work=mock:delay=0.02,reply=ab,repeat=20")
# The default lease (30 s): the restarted replica sees the killed one's process gone and takes its
# lines back at once (tests/jobs/test_batches.py checks that on its own).
OPTIONS = ("--batch-workers", "4", "--batch-slot-share", "1")
LINES = 24
KILLS = 2


@pytest.mark.slow
def test_every_line_ends_once_and_is_billed_once_after_sigkill(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "batch-crash"
    server = start_server(data_dir, *MODELS, *OPTIONS)
    price_all(server, "work")
    key = funded_key(server, "crash", "1")
    client = openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)
    lines = [chat_line(f"line-{i}", model="work") for i in range(LINES)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(batch_file(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")

    for _ in range(KILLS):
        done_before = len(query(server, "SELECT 1 FROM work_items WHERE state = 'done'"))
        # Kill while lines are running and more have finished since the last life.
        wait_until(lambda: query(server, "SELECT COUNT(*) AS n FROM work_items WHERE state = 'done'")[0]["n"],
                   lambda n: n >= done_before + 2, timeout=60)
        wait_until(lambda: query(server, "SELECT COUNT(*) AS n FROM holds WHERE state = 'open'")[0]["n"],
                   lambda n: n > 0, timeout=30)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        server = start_server(data_dir, *MODELS, *OPTIONS)
        client = openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)

    try:
        batch = wait_until(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed",
                           timeout=90)
        assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)
        out = jsonl(client.files.content(batch.output_file_id).read())
        assert batch.error_file_id is None
        assert sorted(o["custom_id"] for o in out) == sorted(f"line-{i}" for i in range(LINES))

        # Some lines were cut short by a kill and ran again.
        attempts = collections.Counter()
        for row in query(server, "SELECT request_id, status, cost FROM usage_records WHERE request_id LIKE ?",
                         f"{batch.id}:%"):
            line = row["request_id"].rsplit("~", 1)[0]
            attempts[line] += 1
            if row["status"] == "recovered":
                assert row["cost"] == 0  # a killed attempt delivered nothing and costs nothing
        assert max(attempts.values()) > 1
        # Exactly one billed settlement per line, and it is the attempt whose result is in the file.
        billed = query(server, "SELECT request_id FROM usage_records WHERE request_id LIKE ? AND status = 'ok'",
                       f"{batch.id}:%")
        assert sorted(r["request_id"] for r in billed) == sorted(o["response"]["request_id"] for o in out)
        for o in out:
            (usage,) = query(server, "SELECT * FROM usage_records WHERE request_id = ?", o["response"]["request_id"])
            assert usage["cost"] == usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 5 > 0
            assert usage["completion_tokens"] == o["response"]["body"]["usage"]["completion_tokens"]
        assert not query(server, "SELECT 1 FROM holds WHERE state = 'open'")
        assert_books_balance(server)
    finally:
        server.stop()
