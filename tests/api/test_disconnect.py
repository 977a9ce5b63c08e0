"""A client that goes away mid-stream stops the generation, and the request is still metered."""

from __future__ import annotations

import time

import httpx

from tests.conftest import Server


def test_disconnect_mid_stream_stops_generation_and_is_metered(mock_server: Server, api_key: str) -> None:
    # The slow mock paces one token every 50 ms; its reply has 44 tokens (~2.2 s).
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "request_id": "disconnect-1"}
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{mock_server.zhipu_url}/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {api_key}"}) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen += 1
                if seen == 4:
                    break
    closed_at = time.monotonic()
    row = mock_server.wait_usage("disconnect-1", timeout=3)
    assert time.monotonic() - closed_at < 1.0
    assert row["status"] == "aborted"
    # Three content chunks reached the client; generation stopped within a step or two after.
    assert 3 <= row["completion_tokens"] <= 6
    assert row["finish_reason"] is None
