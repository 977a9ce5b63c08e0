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


def test_client_gone_before_the_first_byte_still_settles(mock_server: Server, api_key: str) -> None:
    import json
    import socket
    import struct

    ids = [f"gone-early-{i}" for i in range(20)]
    for request_id in ids:
        body = json.dumps({"model": "slow", "messages": [{"role": "user", "content": "hi"}],
                           "stream": True, "request_id": request_id}).encode()
        head = (f"POST /api/paas/v4/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock = socket.create_connection(("127.0.0.1", mock_server.port))
        sock.sendall(head + body)
        # Reset the connection at once: the server sees the client vanish around admission.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    for request_id in ids:
        rows = mock_server.usage_rows(request_id)
        if not rows:  # not even admitted before the reset: then it must never appear
            time.sleep(0.5)
            rows = mock_server.usage_rows(request_id)
        assert len(rows) <= 1
    con_rows = [mock_server.wait_usage(i, timeout=5) for i in ids if mock_server.usage_rows(i)]
    assert all(r["status"] == "aborted" for r in con_rows)
    import sqlite3

    con = sqlite3.connect(mock_server.data_dir / "glmaas.db")
    try:
        open_holds = con.execute("SELECT COUNT(*) FROM holds WHERE state = 'open' AND request_id LIKE 'gone-early-%'")
        assert open_holds.fetchone()[0] == 0
        admitted = con.execute("SELECT COUNT(*) FROM holds WHERE request_id LIKE 'gone-early-%'").fetchone()[0]
    finally:
        con.close()
    assert admitted == len(con_rows) > 0
