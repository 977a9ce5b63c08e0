"""Helpers for the files, batches and async tests: batch input files and waiting for results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def batch_file(lines: list[dict], url: str = "/v1/chat/completions") -> bytes:
    """A batch input file: one chat request per entry of `lines` (custom_id and body)."""
    return "".join(json.dumps({"custom_id": line["custom_id"], "method": "POST", "url": url,
                               "body": line["body"]}) + "\n" for line in lines).encode()


def chat_line(custom_id: str, model: str = "mock", content: str = "hi",
              **extra) -> dict:  # type: ignore[no-untyped-def]
    return {"custom_id": custom_id, "body": {"model": model, "messages": [{"role": "user", "content": content}],
                                             **extra}}


def wait_until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0) -> T:
    """Call `fetch` until `done` says yes of what it returns; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"gave up waiting; last: {value}"
        time.sleep(0.1)


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
