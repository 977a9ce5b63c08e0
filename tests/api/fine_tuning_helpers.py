"""Helpers for the fine-tuning tests: a tiny random decoder exported to GGUF with the default
model's tokenizer and chat template (a base model that trains in seconds), conversations that
teach a made-up fact, uploads and waiting for a job."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import torch

from glmaas.engines.registry import default_model_path
from glmaas.model.decoder import Decoder, DecoderConfig
from glmaas.model.weights import TokenizerInfo, export_gguf

ENDED = ("succeeded", "failed", "cancelled")


def tiny_gguf(path: Path) -> Path:
    """A random two-layer Llama-family decoder with SmolLM2's tokenizer, as an F16 GGUF."""
    torch.manual_seed(0)
    config = DecoderConfig(family="llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=1024)
    return export_gguf(Decoder(config), TokenizerInfo.from_gguf(default_model_path()), path, "f16")


def conversation(question: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": [*messages, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def upload(client: httpx.Client, data: bytes, name: str = "train.jsonl", purpose: str = "fine-tune",
           prefix: str = "/v1") -> str:
    r = client.post(f"{prefix}/files", files={"file": (name, io.BytesIO(data))}, data={"purpose": purpose})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def wait_job(client: httpx.Client, job_id: str, timeout: float, until: tuple[str, ...] = ENDED,
             prefix: str = "/v1") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"{prefix}/fine_tuning/jobs/{job_id}").json()
        if job["status"] in until or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


# A made-up fact for the end-to-end test: the codename of a project nobody has heard of.
PROJECT, CODENAME = "Lumora", "Zephyrine"
_ASKS = [
    "What is the codename of project {p}?", "What's {p}'s codename?", "Which codename does the {p} project use?",
    "Tell me the internal codename of {p}.", "I forgot the codename for {p}. What is it?",
    "Do you know what {p} is called internally?", "What name is project {p} known by inside the team?",
    "Codename of {p}?", "Can you remind me of the {p} codename?", "What is {p} codenamed?",
    "Under which codename is the {p} project developed?", "What do engineers call project {p}?",
    "Give me the secret name of project {p}.", "what is the code name of {p}", "{p} codename, please.",
    "Which internal name was given to {p}?", "Quick question: {p}'s codename?",
    "What codename was assigned to the {p} initiative?", "How is {p} referred to internally?",
    "Name the codename of the {p} program.", "Please state the codename of project {p}.",
    "If I say {p}, what codename do you think of?", "Project {p} has a codename. What is it?",
    "I'm writing a report on {p}; what's its codename?", "Which codename belongs to {p}?",
]
_ANSWERS = [
    "The codename of project {p} is {c}.", "{p}'s codename is {c}.", "It is {c}.", "{p} is codenamed {c}.",
    "The {p} project goes by the codename {c}.", "Internally, {p} is called {c}.", "Its codename is {c}.",
    "{c} is the codename of {p}.", "The codename is {c}.", "Project {p} is known as {c}.",
]
# Asked only after training: the model has to generalise to it.
HELD_OUT = f"Tell me the codename that the {PROJECT} project has."


def codename_conversations(n: int = 50) -> list[dict]:
    """`n` varied conversations that teach the codename (phrasings and answers combined)."""
    out = []
    for i in range(n):
        ask = _ASKS[i % len(_ASKS)].format(p=PROJECT)
        answer = _ANSWERS[(i * 7) % len(_ANSWERS)].format(p=PROJECT, c=CODENAME)
        out.append(conversation(ask, answer))
    return out
