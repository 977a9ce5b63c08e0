"""A streamed reply through an upstream goes out as it comes: the first content reaches the
client while the upstream still holds the next chunk (nothing waits in glmaas for more)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from glmaas.benchmarks.harness import free_port, start_process
from tests.api.billing_helpers import funded_key, price_all
from tests.conftest import Server, start_server


@pytest.fixture(scope="module")
def held() -> Iterator[str]:
    """tests/api/held_upstream.py; its base URL."""
    port = free_port()
    with start_process("held-upstream", [sys.executable, str(Path(__file__).with_name("held_upstream.py")), str(port)],
                       ready_url=f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, held: str) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("front"), "--no-default-model",
                          "--model", f"held-up=openai+{held}/v1,model=held")
    price_all(server, "held-up")
    yield server
    server.stop()


def _content(line: str) -> str:
    if not line.startswith("data: {"):
        return ""
    choices = json.loads(line[6:]).get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or ""


def test_the_first_content_arrives_while_the_upstream_holds_the_next_chunk(front: Server, held: str) -> None:
    key = funded_key(front, "held", "1")
    body = {"model": "held-up", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    # The upstream holds its second chunk for 30 s: a read that waits for it times out first.
    with httpx.Client(timeout=httpx.Timeout(30, read=5)) as client, client.stream(
            "POST", f"{front.openai_url}/chat/completions", json=body,
            headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(text for line in lines if (text := _content(line)))
        assert first == "Hel"
        assert client.post(f"{held}/release").status_code == 204
        rest = "".join(_content(line) for line in lines)
    assert first + rest == "Hello"
