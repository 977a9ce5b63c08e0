"""The server harness: a server is ready when its URL answers, one that dies or never answers is
reported with its log, and stopping ends the process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from glmaas.benchmarks.harness import (
    ServerFailed,
    ServerProcess,
    free_port,
    start_process,
)


def _http_server(port: int) -> list[str]:
    return [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_a_server_is_ready_when_it_answers_and_stops(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "ready").write_text("ok")
    argv = [*_http_server(port), "--directory", str(tmp_path)]
    with start_process("files", argv, ready_url=f"http://127.0.0.1:{port}/ready",
                       log=tmp_path / "files.log") as server:
        assert server.alive() and server.answers()
        assert "GET /ready" in server.log_tail()
    assert not server.alive()
    assert server.proc is not None and server.proc.returncode is not None


def test_a_server_that_exits_is_reported_with_its_log() -> None:
    argv = [sys.executable, "-c", "import sys; print('cannot bind: port taken'); sys.exit(3)"]
    with pytest.raises(ServerFailed, match=r"(?s)status 3.*cannot bind: port taken"):
        start_process("broken", argv, ready_url=f"http://127.0.0.1:{free_port()}/", timeout=30)


def test_a_server_that_never_answers_is_stopped() -> None:
    argv = [sys.executable, "-c", "import time; print('thinking', flush=True); time.sleep(60)"]
    server = ServerProcess("mute", argv, ready_url=f"http://127.0.0.1:{free_port()}/").start()
    with pytest.raises(ServerFailed, match=r"(?s)no answer .* in 5 s.*thinking"):
        server.wait_ready(timeout=5)
    assert not server.alive()
