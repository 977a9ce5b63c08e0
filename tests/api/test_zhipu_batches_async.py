"""Files, batches and async chat through the `zhipuai` and `zai-sdk` packages, unchanged, against
/api/paas/v4: errors in the Zhipu dialect, tasks visible only to their account, billed once, and
kept across a restart."""

from __future__ import annotations

import httpx
import pytest
import zai
import zhipuai

from tests.api.batch_helpers import batch_file, chat_line, jsonl, wait_until
from tests.api.billing_helpers import funded_key, price_all, query
from tests.conftest import MOCK_MODELS, Server, start_server

MOCK_REPLY = "This is the mock engine. 你好，世界。"
MESSAGES = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tmp_path_factory.mktemp("zhipu-batches"), *MOCK_MODELS, "--batch-lease-s", "3")
    price_all(server, "mock")
    yield server
    server.stop()


def sdk_clients(server: Server, key: str) -> list:
    return [zhipuai.ZhipuAI(api_key=key, base_url=server.zhipu_url, max_retries=0),
            zai.ZhipuAiClient(api_key=key, base_url=server.zhipu_url, max_retries=0)]


@pytest.mark.parametrize("sdk", [0, 1], ids=["zhipuai", "zai"])
def test_files_and_batch(server: Server, sdk: int) -> None:
    client = sdk_clients(server, funded_key(server, f"zp-batch-{sdk}", "1"))[sdk]
    data = batch_file([chat_line("one"), chat_line("two", max_tokens=5)], url="/v4/chat/completions")
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch").data]
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    batch = wait_until(lambda: client.batches.retrieve(batch.id), lambda b: b.status == "completed")
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 0)
    out = jsonl(client.files.content(batch.output_file_id).content)
    assert {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in out} == {
        "one": MOCK_REPLY, "two": "This "}
    assert batch.id in [b.id for b in client.batches.list().data]
    assert client.files.delete(uploaded.id).deleted


@pytest.mark.parametrize("sdk", [0, 1], ids=["zhipuai", "zai"])
def test_async_chat(server: Server, sdk: int) -> None:
    client = sdk_clients(server, funded_key(server, f"zp-async-{sdk}", "1"))[sdk]
    task = client.chat.asyncCompletions.create(model="mock", messages=MESSAGES, request_id=f"async-req-{sdk}")
    assert task.task_status == "PROCESSING" and task.request_id == f"async-req-{sdk}" and task.model == "mock"
    result = wait_until(lambda: client.chat.asyncCompletions.retrieve_completion_result(task.id),
                        lambda r: r.task_status != "PROCESSING")
    assert result.task_status == "SUCCESS"
    assert result.choices[0].message.content == MOCK_REPLY
    (usage,) = query(server, "SELECT * FROM usage_records WHERE request_id LIKE ?", f"{task.id}~%")
    assert usage["completion_tokens"] == result.usage.completion_tokens
    assert usage["cost"] == usage["prompt_tokens"] * 2 + usage["completion_tokens"] * 10  # full price
    # Asking again answers the same, and bills nothing more.
    again = client.chat.asyncCompletions.retrieve_completion_result(task.id)
    assert again.choices[0].message.content == MOCK_REPLY
    assert len(query(server, "SELECT 1 FROM ledger_entries WHERE kind = 'settlement' AND request_id LIKE ?",
                     f"{task.id}~%")) == 1


def test_async_task_of_another_account_is_404(server: Server) -> None:
    owner = sdk_clients(server, funded_key(server, "zp-async-owner", "1"))[0]
    other = sdk_clients(server, funded_key(server, "zp-async-other", "1"))[0]
    task = owner.chat.asyncCompletions.create(model="mock", messages=MESSAGES)
    with pytest.raises(zhipuai.APIStatusError) as caught:
        other.chat.asyncCompletions.retrieve_completion_result(task.id)
    assert caught.value.status_code == 404


def test_async_errors_in_zhipu_dialect(server: Server) -> None:
    key = funded_key(server, "zp-async-errors", "1")
    url = f"{server.zhipu_url}/async/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(url, headers=headers, json={"model": "no-such-model", "messages": MESSAGES})
    assert r.status_code == 400 and r.json()["error"]["code"] == "1211"
    r = httpx.post(url, headers=headers, json={"model": "mock"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "1213"
    r = httpx.post(url, json={"model": "mock", "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "1001"


def test_async_task_that_cannot_be_paid_fails(server: Server) -> None:
    client = sdk_clients(server, funded_key(server, "zp-async-poor", "0.000001"))[0]
    task = client.chat.asyncCompletions.create(model="mock", messages=MESSAGES, max_tokens=1000)
    result = wait_until(lambda: httpx.get(f"{server.zhipu_url}/async-result/{task.id}",
                                          headers={"Authorization": f"Bearer {client.api_key}"}).json(),
                        lambda r: r["task_status"] != "PROCESSING")
    assert result["task_status"] == "FAIL" and result["error"]["code"] == "1113"


def test_async_task_survives_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Submitted to a replica without workers, done by the next one on the same data.
    first = start_server(tmp_path / "async-restart", *MOCK_MODELS, "--batch-workers", "0")
    try:
        key = funded_key(first, "restart", "1")
        client = zhipuai.ZhipuAI(api_key=key, base_url=first.zhipu_url, max_retries=0)
        task = client.chat.asyncCompletions.create(model="mock", messages=MESSAGES)
        pending = httpx.get(f"{first.zhipu_url}/async-result/{task.id}", headers={"Authorization": f"Bearer {key}"})
        assert pending.json() == {"id": task.id, "request_id": task.request_id, "model": "mock",
                                  "task_status": "PROCESSING"}
    finally:
        first.stop()
    second = start_server(tmp_path / "async-restart", *MOCK_MODELS)
    try:
        client = zhipuai.ZhipuAI(api_key=key, base_url=second.zhipu_url, max_retries=0)
        result = wait_until(lambda: client.chat.asyncCompletions.retrieve_completion_result(task.id),
                            lambda r: r.task_status != "PROCESSING")
        assert result.task_status == "SUCCESS" and result.choices[0].message.content == MOCK_REPLY
    finally:
        second.stop()
