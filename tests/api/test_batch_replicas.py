"""Two replicas on one PostgreSQL database share one batch: both lease its lines (FOR UPDATE SKIP
LOCKED), no line runs twice, each ends once in the output file, and the file written by either
replica is read through the other (its bytes live in the database)."""

from __future__ import annotations

import collections
import io

import openai
import psycopg

from tests.api.batch_helpers import batch_file, chat_line, jsonl, wait_until
from tests.api.billing_helpers import funded_key, price_all
from tests.conftest import start_server

# ~0.3 s a line: one replica alone needs ~4 s for the batch (3 workers), far longer than the other
# replica's idle workers wait between polls (at most 1 s), so that both take lines however the
# machine's load delays either.
MODELS = ("--no-default-model", "--model", "work=mock:delay=0.03,reply=ab,repeat=10")
LINES = 40
ENV = {"GLMAAS_ADMIN_TOKEN": "glmaas-admin-test-batch-replicas",
       "GLMAAS_MASTER_KEY": "c2hhcmVkLW1hc3Rlci1rZXktZm9yLXJlcGxpY2EtdGVzdHM"}


def _pg(url: str, sql: str, *args: object) -> list[tuple]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        return con.execute(sql, args).fetchall()


def test_two_replicas_share_a_batch_without_doing_a_line_twice(
        tmp_path, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    options = (*MODELS, "--database-url", pg_url, "--batch-workers", "3", "--batch-slot-share", "1")
    a = start_server(tmp_path / "a", *options, env=ENV)
    b = start_server(tmp_path / "b", *options, env=ENV)
    try:
        for server in (a, b):
            (server.data_dir / "admin.token").write_text(ENV["GLMAAS_ADMIN_TOKEN"])
        price_all(a, "work")
        key = funded_key(a, "pg-batch", "1")
        via_a = openai.OpenAI(api_key=key, base_url=a.openai_url, max_retries=0)
        via_b = openai.OpenAI(api_key=key, base_url=b.openai_url, max_retries=0)
        lines = [chat_line(f"line-{i}", model="work") for i in range(LINES)]
        uploaded = via_a.files.create(file=("in.jsonl", io.BytesIO(batch_file(lines))), purpose="batch")
        batch = via_b.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
        batch = wait_until(lambda: via_a.batches.retrieve(batch.id), lambda x: x.status == "completed", timeout=120)
        assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)
        out = jsonl(via_b.files.content(batch.output_file_id).read())
        assert sorted(o["custom_id"] for o in out) == sorted(f"line-{i}" for i in range(LINES))

        # One attempt per line: no line was taken twice.
        assert _pg(pg_url, "SELECT MAX(attempts), MIN(attempts) FROM work_items WHERE batch_id = %s",
                   batch.id) == [(1, 1)]
        requests = _pg(pg_url, "SELECT request_id, COUNT(*) FROM usage_records WHERE request_id LIKE %s "
                               "GROUP BY request_id", f"{batch.id}:%")
        assert len(requests) == LINES and all(n == 1 for _, n in requests)
        # Both replicas did some of the work (each hold records the replica that admitted it).
        owners = collections.Counter(o for (o,) in _pg(pg_url, "SELECT owner FROM holds WHERE request_id LIKE %s",
                                                       f"{batch.id}:%"))
        assert len(owners) == 2, owners
        # The database is the session's: other tests' holds are not this batch's business.
        assert not _pg(pg_url, "SELECT 1 FROM holds WHERE state = 'open' AND request_id LIKE %s", f"{batch.id}:%")
    finally:
        a.stop()
        b.stop()
