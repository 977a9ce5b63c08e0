"""Fine-tuning jobs over the API on a tiny random decoder (it trains in seconds): validation with
line-numbered errors in the caller's dialect, the shapes the SDKs parse (jobs, events,
checkpoints, lists), the tuned model served to its account alone and deleted, and the bill held
at creation and settled once — in full at the end, for what was trained at a cancellation."""

from __future__ import annotations

import json
import time

import openai
import pytest

from tests.api.billing_helpers import admin, balance_micro, funded_key, query
from tests.api.fine_tuning_helpers import conversation, jsonl, tiny_gguf, upload, wait_job
from tests.inprocess import AppServer

# Units of currency per million trained tokens: each trained token costs 3 micro-units.
TRAINING_PRICE = 3
FACTS = [conversation(f"Question {i}: what is the codename of project Atlas?", "Its codename is Bluefin.")
         for i in range(6)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tiny_gguf(tmp_path_factory.mktemp("base") / "tiny.gguf")
    server = AppServer(tmp_path_factory.mktemp("fine-tuning"), "--no-default-model", "--model",
                       f"tiny=llamacpp:{base},threads=1,slots=2", "--fine-tuning-threads", "1",
                       "--batch-lease-s", "3")
    with admin(server) as client:
        r = client.put("/admin/prices/tiny", json={"input": "1", "output": "1", "training": str(TRAINING_PRICE)})
        assert r.status_code == 200 and r.json()["tiny"]["training"] == f"{TRAINING_PRICE}.000000", r.text
    yield server
    server.stop()


def sdk(server: AppServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.openai_url, http_client=server.client(), max_retries=0)


def test_a_bad_training_file_is_refused_with_its_line_numbers(server: AppServer) -> None:
    key = funded_key(server, "ft-bad", "10")
    bad = jsonl([FACTS[0], {"messages": [{"role": "user", "content": "no answer"}]},
                 {"messages": [{"role": "pilot", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    with server.client(headers={"Authorization": f"Bearer {key}"}) as client:
        file_id = upload(client, bad)
        r = client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id})
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert "line 2: no assistant message" in message and "line 3: messages[0] needs a role" in message
        z = client.post("/api/paas/v4/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id})
        assert z.status_code == 400 and z.json()["error"]["code"] == "1214" and "line 2" in z.json()["error"]["message"]
        batch_file = upload(client, jsonl([{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}]),
                            purpose="batch")
        r = client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": batch_file})
        assert r.status_code == 400 and "purpose 'fine-tune'" in r.json()["error"]["message"]
        r = client.post("/v1/fine_tuning/jobs", json={"model": "nope", "training_file": file_id})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "file-missing"})
        assert r.status_code == 404
        r = client.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id,
                                                      "hyperparameters": {"n_epochs": 0}})
        assert r.status_code == 400 and "n_epochs" in r.json()["error"]["message"]
    assert balance_micro(server, "ft-bad") == 10_000_000  # nothing held for a refused job


def test_a_job_trains_serves_its_model_to_its_account_and_bills_once(server: AppServer) -> None:
    key, other = funded_key(server, "ft-owner", "10"), funded_key(server, "ft-other", "10")
    client = sdk(server, key)
    training = client.files.create(file=("train.jsonl", jsonl(FACTS)), purpose="fine-tune")
    validation = client.files.create(file=("valid.jsonl", jsonl(FACTS[:2])), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, validation_file=validation.id,
                                         suffix="atlas", hyperparameters={"n_epochs": 2, "batch_size": 3})
    assert job.status == "queued" and job.hyperparameters.n_epochs == 2 and job.method.type == "supervised"
    held = 10_000_000 - balance_micro(server, "ft-owner")
    tokens = held // TRAINING_PRICE
    assert held == tokens * TRAINING_PRICE and tokens > 0
    with server.client(headers={"Authorization": f"Bearer {key}"}) as http:
        done = wait_job(http, job.id, 120)
    assert done["status"] == "succeeded", done
    assert done["fine_tuned_model"] == f"ft:tiny:{done['organization_id']}:atlas:{job.id}"
    assert done["trained_tokens"] == tokens
    assert balance_micro(server, "ft-owner") == 10_000_000 - held
    entries = query(server, "SELECT kind, amount FROM ledger_entries WHERE request_id = ? ORDER BY id", job.id)
    assert [(e["kind"], e["amount"]) for e in entries] == [("hold", -held), ("release", held), ("settlement", -held)]

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [e.data for e in events if e.type == "metrics" and "tokens_per_s" in e.data]
    assert sorted(d["step"] for d in steps) == [1, 2, 3, 4]
    assert all(d["train_loss"] > 0 and d["tokens_per_s"] > 0 for d in steps)
    epochs = [e.data for e in events if e.type == "metrics" and "valid_loss" in e.data]
    assert len(epochs) == 2 and all(d["valid_loss"] > 0 for d in epochs)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [2, 4]
    assert all(c.fine_tuning_job_id == job.id and c.metrics.train_loss is not None for c in checkpoints)
    assert job.id in [j.id for j in client.fine_tuning.jobs.list().data]

    model = done["fine_tuned_model"]
    assert model in [m.id for m in client.models.list().data]
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.model == model and reply.usage.completion_tokens >= 1
    stranger = sdk(server, other)
    assert model not in [m.id for m in stranger.models.list().data]
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.retrieve(job.id)
    assert stranger.fine_tuning.jobs.list().data == []
    with server.client(headers={"Authorization": f"Bearer {other}"}) as http:
        assert http.delete(f"/api/paas/v4/fine_tuning/fine_tuned_models/{model}").status_code == 400

    with server.client(headers={"Authorization": f"Bearer {key}"}) as http:
        r = http.delete(f"/api/paas/v4/fine_tuning/fine_tuned_models/{model}")
        assert r.status_code == 200 and r.json()["model_name"] == model and r.json()["delete_status"] == "deleted"
    assert model not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert not (server.data_dir / "fine_tuning" / job.id).exists()


def test_a_cancelled_job_bills_what_it_trained(server: AppServer) -> None:
    key = funded_key(server, "ft-cancel", "10")
    with server.client(headers={"Authorization": f"Bearer {key}"}) as http:
        file_id = upload(http, jsonl(FACTS * 4))
        r = http.post("/api/paas/v4/fine_tuning/jobs", json={
            "model": "tiny", "training_file": file_id, "hyperparameters": {"n_epochs": 50, "batch_size": 2}})
        assert r.status_code == 200, r.text
        job = r.json()
        held = 10_000_000 - balance_micro(server, "ft-cancel")
        running = wait_job(http, job["id"], 60, until=("running",), prefix="/api/paas/v4")
        assert running["status"] == "running"
        deadline = time.monotonic() + 60
        while http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["trained_tokens"] == 0:
            assert time.monotonic() < deadline, "no step trained in a minute"
            time.sleep(0.1)
        cancelled = http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["fine_tuned_model"] is None
        trained = cancelled["trained_tokens"]
    assert 0 < trained * TRAINING_PRICE < held
    assert balance_micro(server, "ft-cancel") == 10_000_000 - trained * TRAINING_PRICE
    settlements = query(server, "SELECT amount FROM ledger_entries WHERE request_id = ? AND kind = 'settlement'",
                        job["id"])
    assert [s["amount"] for s in settlements] == [-trained * TRAINING_PRICE]
    usage = query(server, "SELECT status, prompt_tokens FROM usage_records WHERE request_id = ?", job["id"])
    assert [(u["status"], u["prompt_tokens"]) for u in usage] == [("aborted", trained)]


def test_full_fine_tuning_is_asked_in_the_method(server: AppServer) -> None:
    key = funded_key(server, "ft-full", "10")
    client = sdk(server, key)
    training = client.files.create(file=("train.jsonl", jsonl(FACTS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}, "lora": False}})
    assert job.method.supervised.hyperparameters.n_epochs == 1
    assert json.loads(job.model_dump_json())["method"]["supervised"]["lora"] is False
    with server.client(headers={"Authorization": f"Bearer {key}"}) as http:
        assert wait_job(http, job.id, 120)["status"] == "succeeded"


def test_a_job_runs_on_postgresql(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tiny_gguf(tmp_path_factory.mktemp("pg-base") / "tiny.gguf")
    server = AppServer(tmp_path_factory.mktemp("pg-data"), "--database-url", pg_url, "--no-default-model",
                       "--model", f"tiny=llamacpp:{base},threads=1,slots=2", "--fine-tuning-threads", "1")
    try:
        with admin(server) as client:
            assert client.put("/admin/prices/tiny", json={"input": "1", "output": "1",
                                                          "training": str(TRAINING_PRICE)}).status_code == 200
        key = funded_key(server, "ft-pg", "10")
        with server.client(headers={"Authorization": f"Bearer {key}"}) as http:
            r = http.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": upload(http, jsonl(FACTS)),
                                                        "hyperparameters": {"n_epochs": 1}})
            assert r.status_code == 200, r.text
            held = 10_000_000 - balance_micro(server, "ft-pg")
            done = wait_job(http, r.json()["id"], 120)
            assert done["status"] == "succeeded" and done["trained_tokens"] * TRAINING_PRICE == held
            chat = http.post("/v1/chat/completions", json={"model": done["fine_tuned_model"], "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "hi"}]})
            assert chat.status_code == 200, chat.text
        assert balance_micro(server, "ft-pg") == 10_000_000 - held
    finally:
        server.stop()
