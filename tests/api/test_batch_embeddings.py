"""A batch of embeddings (the app in this process, plain HTTP): each line's vectors are the ones
the interactive endpoint gives, billed at the batch price; a bad line fails on its own."""

from __future__ import annotations

import math

import pytest

from glmaas.engines.registry import default_embedding_folder
from tests.api.batch_helpers import batch_file, jsonl, wait_until
from tests.api.billing_helpers import funded_key, price_all, query
from tests.inprocess import AppServer

MODEL = "minilm"
TEXTS = ["The sea is calm tonight.", "向量检索让搜索更准确。"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    srv = AppServer(tmp_path_factory.mktemp("batch-embeddings"), "--no-default-model",
                    "--model", f"{MODEL}=sentence:{default_embedding_folder()}")
    price_all(srv, MODEL)
    yield srv
    srv.stop()


def test_embeddings_batch(server: AppServer) -> None:
    key = funded_key(server, "embed-batch", "1")
    lines = [{"custom_id": "one", "body": {"model": MODEL, "input": TEXTS[0]}},
             {"custom_id": "two", "body": {"model": MODEL, "input": TEXTS}},
             {"custom_id": "bad", "body": {"model": MODEL, "input": TEXTS[0], "dimensions": 7}}]
    with server.client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        uploaded = http.post("/v1/files", files={"file": ("in.jsonl", batch_file(lines, url="/v1/embeddings"))},
                             data={"purpose": "batch"}).json()
        batch = http.post("/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings",
                                               "completion_window": "24h"}).json()
        batch = wait_until(lambda: http.get(f"/v1/batches/{batch['id']}").json(),
                           lambda b: b["status"] == "completed")
        assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        output = http.get(f"/v1/files/{batch['output_file_id']}/content").content
        out = {o["custom_id"]: o["response"] for o in jsonl(output)}
        (err,) = jsonl(http.get(f"/v1/files/{batch['error_file_id']}/content").content)
        interactive = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()
    assert err["custom_id"] == "bad" and err["response"]["status_code"] == 400
    assert [len(d["embedding"]) for d in out["two"]["body"]["data"]] == [384, 384]
    for got, want in zip(out["two"]["body"]["data"], interactive["data"], strict=True):
        assert max(abs(a - b) for a, b in zip(got["embedding"], want["embedding"], strict=True)) < 1e-5
    assert math.isclose(sum(x * x for x in out["one"]["body"]["data"][0]["embedding"]), 1.0, rel_tol=1e-5)
    for response in out.values():
        (usage,) = query(server, "SELECT * FROM usage_records WHERE request_id = ?", response["request_id"])
        assert usage["prompt_tokens"] == response["body"]["usage"]["prompt_tokens"] > 0
        assert usage["cost"] == usage["prompt_tokens"] * 1  # half of 2 per input token
