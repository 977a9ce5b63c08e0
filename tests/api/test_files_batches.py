"""Files and batches through the `openai` SDK, unchanged, and plain HTTP: uploads checked line by
line, tenants isolated, a batch's lines billed at the batch discount, each in the output or the
error file exactly once."""

from __future__ import annotations

import io
import sqlite3

import httpx
import openai
import pytest

from tests.api.batch_helpers import batch_file, chat_line, jsonl, wait_until
from tests.api.billing_helpers import balance_micro, funded_key, price_all, query
from tests.conftest import MOCK_MODELS, Server, start_server

MOCK_REPLY = "This is the mock engine. 你好，世界。"
MAX_FILE_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tmp_path_factory.mktemp("batches"), *MOCK_MODELS, "--max-file-bytes",
                          str(MAX_FILE_BYTES), "--batch-workers", "2", "--batch-lease-s", "3")
    price_all(server, "mock", "slow")
    yield server
    server.stop()


def client_of(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)


def finished(batch) -> bool:  # type: ignore[no-untyped-def]
    return batch.status in ("completed", "failed", "cancelled", "expired")


def test_file_lifecycle(server: Server) -> None:
    client = client_of(server, funded_key(server, "files-life", "1"))
    data = batch_file([chat_line("a"), chat_line("b")])
    created = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert (created.purpose, created.bytes, created.filename) == ("batch", len(data), "in.jsonl")
    assert client.files.retrieve(created.id).id == created.id
    assert created.id in [f.id for f in client.files.list()]
    assert client.files.content(created.id).read() == data
    assert client.files.delete(created.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_upload_names_the_bad_lines(server: Server) -> None:
    client = client_of(server, funded_key(server, "files-bad", "1"))
    data = batch_file([chat_line("a")]) + b"{not json\n" + b'{"custom_id": "c", "url": 3, "body": {}}\n'
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("bad.jsonl", io.BytesIO(data)), purpose="batch")
    message = caught.value.body["message"]
    assert "line 2: not valid JSON" in message and "line 3: url must be a string" in message


def test_upload_over_the_size_limit_is_413(server: Server) -> None:
    client = client_of(server, funded_key(server, "files-big", "1"))
    line = batch_file([chat_line("x", content="y" * 1000)])
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", io.BytesIO(line * 100)), purpose="batch")
    assert caught.value.status_code == 413


def test_unknown_purpose_is_400_in_zhipu_dialect(server: Server) -> None:
    key = funded_key(server, "files-purpose", "1")
    r = httpx.post(f"{server.zhipu_url}/files", headers={"Authorization": f"Bearer {key}"},
                   files={"file": ("x.jsonl", batch_file([chat_line("a")]))}, data={"purpose": "nonsense"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "1214"


def test_files_and_batches_of_another_account_are_404(server: Server) -> None:
    owner = client_of(server, funded_key(server, "files-owner", "1"))
    other_key = funded_key(server, "files-other", "1")
    other = client_of(server, other_key)
    created = owner.files.create(file=("in.jsonl", io.BytesIO(batch_file([chat_line("a")]))), purpose="batch")
    batch = owner.batches.create(input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (lambda: other.files.retrieve(created.id), lambda: other.files.content(created.id),
                 lambda: other.files.delete(created.id), lambda: other.batches.retrieve(batch.id),
                 lambda: other.batches.cancel(batch.id),
                 lambda: other.batches.create(input_file_id=created.id, endpoint="/v1/chat/completions",
                                              completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert created.id not in [f.id for f in other.files.list()]
    r = httpx.get(f"{server.zhipu_url}/files/{created.id}", headers={"Authorization": f"Bearer {other_key}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "1222"


def test_batch_runs_every_line_at_half_price(server: Server) -> None:
    client = client_of(server, funded_key(server, "batch-ok", "1"))
    lines = [chat_line(f"req-{i}", max_tokens=8 + i) for i in range(5)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(batch_file(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "nightly"})
    assert batch.status == "in_progress" and batch.request_counts.total == 5
    batch = wait_until(lambda: client.batches.retrieve(batch.id), finished)
    assert batch.status == "completed" and batch.error_file_id is None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 0)
    assert batch.metadata == {"job": "nightly"}
    out = jsonl(client.files.content(batch.output_file_id).read())
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(5)]
    for i, o in enumerate(out):
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200
        assert body["choices"][0]["message"]["content"] == MOCK_REPLY.encode()[:8 + i].decode(errors="ignore")
        (usage,) = query(server, "SELECT * FROM usage_records WHERE request_id = ?", o["response"]["request_id"])
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
            body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"])
        # Half of 2 per prompt token and 10 per completion token (prices per million, in micro-units).
        assert usage["cost"] == usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 5
    assert batch.id in [b.id for b in client.batches.list()]


def test_line_the_balance_cannot_cover_fails_and_the_rest_continue(server: Server) -> None:
    # 0.002 units = 2000 micro-units; a line holds (prompt + max_tokens * 5) at half price.
    client = client_of(server, funded_key(server, "batch-poor", "0.002"))
    lines = [chat_line("small-1", max_tokens=4), chat_line("huge", max_tokens=4000), chat_line("small-2", max_tokens=4)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(batch_file(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_until(lambda: client.batches.retrieve(batch.id), finished)
    assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 2, 1)
    assert sorted(o["custom_id"] for o in jsonl(client.files.content(batch.output_file_id).read())) == [
        "small-1", "small-2"]
    (err,) = jsonl(client.files.content(batch.error_file_id).read())
    assert err["custom_id"] == "huge" and err["response"]["status_code"] == 429
    assert err["error"]["code"] == "insufficient_quota"
    assert not query(server, "SELECT 1 FROM holds WHERE request_id = ?", err["response"]["request_id"])
    assert balance_micro(server, "batch-poor") > 0


def test_lines_that_do_not_fit_the_endpoint_fail_the_batch(server: Server) -> None:
    client = client_of(server, funded_key(server, "batch-url", "1"))
    data = batch_file([chat_line("a")], url="/v1/embeddings")
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.errors.data[0].line == 1
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h")


def test_cancel_stops_lines_not_started(server: Server) -> None:
    client = client_of(server, funded_key(server, "batch-cancel", "1"))
    lines = [chat_line(f"slow-{i}", model="slow") for i in range(20)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(batch_file(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    batch = wait_until(lambda: client.batches.retrieve(batch.id), finished)
    assert batch.status == "cancelled"
    done = batch.request_counts.completed + batch.request_counts.failed
    assert done < 20
    if batch.output_file_id:
        assert len(jsonl(client.files.content(batch.output_file_id).read())) == batch.request_counts.completed
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_an_embeddings_line_on_a_chat_model_fails_on_its_own(server: Server) -> None:
    client = client_of(server, funded_key(server, "batch-embed", "1"))
    data = batch_file([{"custom_id": "e1", "body": {"model": "mock", "input": "hello"}}], url="/v1/embeddings")
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = wait_until(lambda: client.batches.retrieve(batch.id), finished)
    assert (batch.status, batch.request_counts.failed, batch.output_file_id) == ("completed", 1, None)
    (err,) = jsonl(client.files.content(batch.error_file_id).read())
    assert err["custom_id"] == "e1" and err["response"]["status_code"] == 404
    assert "not an embedding model" in err["error"]["message"]


def test_lists_page_with_a_cursor_and_show_only_the_callers_objects(server: Server) -> None:
    key = funded_key(server, "lists-owner", "1")
    owner = client_of(server, key)
    other = client_of(server, funded_key(server, "lists-other", "1"))
    theirs = other.files.create(file=("x.jsonl", io.BytesIO(batch_file([chat_line("x")]))), purpose="batch")
    other_batch = other.batches.create(input_file_id=theirs.id, endpoint="/v1/chat/completions",
                                       completion_window="24h")
    made = [owner.files.create(file=(f"in{i}.jsonl", io.BytesIO(batch_file([chat_line(f"c{i}")]))),
                               purpose="batch") for i in range(5)]
    newest_first = [f.id for f in reversed(made)]

    first = owner.files.list(limit=2)
    assert [f.id for f in first.data] == newest_first[:2] and first.has_more
    assert [f.id for f in owner.files.list(limit=2)] == newest_first  # the SDK follows `after`
    assert [f.id for f in owner.files.list(limit=2, order="asc")] == list(reversed(newest_first))
    last = owner.files.list(limit=2, after=newest_first[3])
    assert [f.id for f in last.data] == newest_first[4:] and not last.has_more
    assert owner.files.list(after=theirs.id).data == []  # another account's id is no cursor
    r = httpx.get(f"{server.zhipu_url}/files", params={"limit": 3, "after": newest_first[0]},
                  headers={"Authorization": f"Bearer {key}"})
    body = r.json()
    assert r.status_code == 200 and [f["id"] for f in body["data"]] == newest_first[1:4]
    assert (body["has_more"], body["first_id"], body["last_id"]) == (True, newest_first[1], newest_first[3])

    created = [owner.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                    completion_window="24h").id for f in made[:3]]
    page = owner.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    assert [b.id for b in owner.batches.list(limit=2)] == created[::-1]
    assert other_batch.id not in [b.id for b in owner.batches.list(limit=1)]
    assert owner.batches.list(after=other_batch.id).data == []
    r = httpx.get(f"{server.zhipu_url}/batches", params={"limit": 1, "after": created[2]},
                  headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and [b["id"] for b in r.json()["data"]] == [created[1]] and r.json()["has_more"]


def test_a_line_out_of_attempts_ends_in_the_error_file_unbilled(server: Server) -> None:
    client = client_of(server, funded_key(server, "batch-attempts", "1"))
    lines = [chat_line(f"slow-{i}", model="slow") for i in range(6)]
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(batch_file(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    # The last line has had its three attempts already, each cut short (recovery put it back).
    con = sqlite3.connect(server.data_dir / "glmaas.db", timeout=10)
    with con:
        changed = con.execute("UPDATE work_items SET attempts = 3 WHERE id = ? AND state = 'pending'",
                              (f"{batch.id}:6",)).rowcount
    con.close()
    assert changed == 1, "the line had started before the test could mark it"
    batch = wait_until(lambda: client.batches.retrieve(batch.id), finished)
    assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 5, 1)
    [error] = jsonl(client.files.content(batch.error_file_id).read())
    assert error["custom_id"] == "slow-5" and error["error"]["code"] == "max_attempts_exceeded"
    assert "3 times" in error["error"]["message"]
    billed = query(server, "SELECT request_id FROM usage_records WHERE request_id LIKE ?", f"{batch.id}:%")
    assert sorted(r["request_id"] for r in billed) == sorted(f"{batch.id}:{n}~1" for n in range(1, 6))
