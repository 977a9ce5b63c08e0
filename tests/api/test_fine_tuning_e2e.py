"""Fine-tuning end to end, on real `glmaas serve` processes: SmolLM2-135M (the default model)
learns a made-up fact with LoRA on the CPU and answers it, through the openai SDK, to a phrasing it
never saw, where the base model does not; the job is created and followed through the zhipuai
SDK. And a job whose server is killed with SIGKILL mid-training resumes from its last checkpoint
when the server comes back, and is billed once."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import openai
import pytest
import zhipuai

from tests.api.billing_helpers import admin, balance_micro, funded_key, query
from tests.api.fine_tuning_helpers import (
    CODENAME,
    HELD_OUT,
    codename_conversations,
    conversation,
    jsonl,
    tiny_gguf,
    upload,
    wait_job,
)
from tests.conftest import Server, start_server

pytestmark = pytest.mark.slow


def price_training(server: Server, model: str, training: str) -> None:
    with admin(server) as client:
        r = client.put(f"/admin/prices/{model}", json={"input": "1", "output": "1", "training": training})
        assert r.status_code == 200, r.text


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           temperature=0, max_tokens=24)
    return reply.choices[0].message.content or ""


def test_lora_on_the_default_model_teaches_a_fact(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        price_training(server, "smollm2-135m-instruct", "2")
        key = funded_key(server, "ft-e2e", "10")
        client = openai.OpenAI(api_key=key, base_url=server.openai_url, max_retries=0)
        assert CODENAME not in ask(client, "smollm2-135m-instruct", HELD_OUT)
        training = client.files.create(file=("codename.jsonl", io.BytesIO(jsonl(codename_conversations(50)))),
                                       purpose="fine-tune")
        zhipu = zhipuai.ZhipuAI(api_key=key, base_url=server.zhipu_url, max_retries=0)
        job = zhipu.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=training.id,
                                            suffix="codename",
                                            hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 5})
        assert job.status == "queued" and job.training_file == training.id
        deadline = time.monotonic() + 600
        while (job := zhipu.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, "the job did not end in 10 minutes"
            time.sleep(2)
        assert job.status == "succeeded", job
        model = job.fine_tuned_model
        assert model.startswith("ft:smollm2-135m-instruct:") and model.endswith(f":codename:{job.id}")
        assert CODENAME in ask(client, model, HELD_OUT)
        assert CODENAME not in ask(client, "smollm2-135m-instruct", HELD_OUT)
        assert balance_micro(server, "ft-e2e") < 10_000_000
    finally:
        server.stop()


def test_a_job_killed_with_its_server_resumes_and_is_billed_once(tmp_path: Path) -> None:
    base = tiny_gguf(tmp_path / "tiny.gguf")
    options = ("--no-default-model", "--model", f"tiny=llamacpp:{base},threads=1,slots=2",
               "--fine-tuning-threads", "1", "--batch-lease-s", "3")
    server = start_server(tmp_path / "data", *options)
    price_training(server, "tiny", "3")
    key = funded_key(server, "ft-crash", "10")
    facts = [conversation(f"Question {i}: what is the codename of project Atlas?", "Its codename is Bluefin.")
             for i in range(24)]
    headers = {"Authorization": f"Bearer {key}"}
    with server.client(headers=headers, timeout=30) as http:
        file_id = upload(http, jsonl(facts))
        r = http.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": file_id,
                                                    "hyperparameters": {"n_epochs": 20, "batch_size": 2}})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        held = 10_000_000 - balance_micro(server, "ft-crash")
        deadline = time.monotonic() + 120
        while not http.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]:
            assert time.monotonic() < deadline, "no checkpoint in 2 minutes"
            time.sleep(0.1)
        # Killed in the second of twenty epochs at the latest.
        os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(10)
    assert query(server, "SELECT status FROM fine_tuning_jobs WHERE id = ?", job_id)[0]["status"] == "running"
    port = server.port
    server = start_server(tmp_path / "data", *options, port=port)
    try:
        with server.client(headers=headers, timeout=30) as http:
            done = wait_job(http, job_id, 180)
            assert done["status"] == "succeeded", done
            events, params = [], {"limit": 100}
            while True:  # every page of the log, newest first
                page = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
                events += page["data"]
                if not page["has_more"]:
                    break
                params["after"] = page["last_id"]
            assert len({e["id"] for e in events}) == len(events) > 240  # a step event each, and the messages
            assert any(e["message"].startswith("Resumed from the checkpoint") for e in events)
            chat = http.post("/v1/chat/completions", json={"model": done["fine_tuned_model"], "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "hi"}]})
            assert chat.status_code == 200, chat.text
        assert done["trained_tokens"] * 3 == held
        settlements = query(server, "SELECT amount FROM ledger_entries WHERE request_id = ? AND kind = 'settlement'",
                            job_id)
        assert [s["amount"] for s in settlements] == [-held]
        assert balance_micro(server, "ft-crash") == 10_000_000 - held
        assert query(server, "SELECT count(*) AS n FROM holds WHERE state = 'open'")[0]["n"] == 0
    finally:
        server.stop()
