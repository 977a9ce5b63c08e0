"""Shared fixtures: a real `glmaas serve` process on a free port, and the CLI."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.shared_state import UNREACHABLE, pg_url, redis_url  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Say loudly when the multi-replica tests could not run."""
    for message in UNREACHABLE:
        terminalreporter.write_sep("!", "MULTI-REPLICA TESTS DID NOT RUN", red=True, bold=True)
        terminalreporter.write_line(f"{message}: start PostgreSQL and Redis and run make test again.",
                                    red=True, bold=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, data_dir: Path, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glmaas", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=check, cwd=ROOT, env={**os.environ, **(env or {})},
        timeout=120,
    )


@dataclass
class Server:
    """A running `glmaas serve` process."""

    data_dir: Path
    port: int
    proc: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def zhipu_url(self) -> str:
        return f"{self.base_url}/api/paas/v4"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, data_dir=self.data_dir, env=self.env, check=check)

    def create_key(self, *extra: str) -> str:
        out = self.cli("keys", "create", *extra)
        return out.stdout.strip().splitlines()[-1]

    def usage_rows(self, request_id: str) -> list[sqlite3.Row]:
        con = sqlite3.connect(self.data_dir / "glmaas.db")
        con.row_factory = sqlite3.Row
        try:
            return con.execute(
                "SELECT * FROM usage_records WHERE request_id = ?", (request_id,)
            ).fetchall()
        finally:
            con.close()

    def wait_usage(self, request_id: str, timeout: float = 5.0) -> sqlite3.Row:
        """The single usage record of `request_id`, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.usage_rows(request_id)
            if rows or time.monotonic() > deadline:
                assert len(rows) == 1, f"expected one usage record for {request_id}, got {len(rows)}"
                return rows[0]
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0, port: int | None = None) -> Server:
    """Start `glmaas serve` with `args` (on `port`, else a free one) and wait until it answers."""
    port = port or free_port()
    log = data_dir / f"server-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "glmaas", "serve", "--port", str(port), "--data-dir", str(data_dir),
         *args],
        cwd=ROOT, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    server = Server(data_dir, port, proc, log, env or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"glmaas serve exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"glmaas serve did not start in {timeout}s:\n{log.read_text()}")


MOCK_MODELS = ("--no-default-model", "--model", "mock=mock", "--model", "slow=mock:delay=0.05",
               "--model", "tiny-context=mock:context=64")


@pytest.fixture(scope="session")
def mock_server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tmp_path_factory.mktemp("mock-server"), *MOCK_MODELS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api_key(mock_server: Server) -> str:
    return mock_server.create_key("--name", "tests")
