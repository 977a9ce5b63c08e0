"""Shared fixtures: a real `glmaas serve` process on a free port (started by the server harness of
`glmaas.benchmarks.harness`), and the CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from glmaas.benchmarks.harness import GlmaasProcess, start_glmaas
from tests.shared_state import UNREACHABLE, pg_url, redis_url  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Say loudly when the multi-replica tests could not run."""
    for message in UNREACHABLE:
        terminalreporter.write_sep("!", "MULTI-REPLICA TESTS DID NOT RUN", red=True, bold=True)
        terminalreporter.write_line(f"{message}: start PostgreSQL and Redis and run make test again.",
                                    red=True, bold=True)


def run_cli(*args: str, data_dir: Path, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glmaas", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=check, cwd=ROOT, env={**os.environ, **(env or {})},
        timeout=120,
    )


class ServerUnderTest:
    """What the tests need of a glmaas server, run as a process (`Server`) or in the tests' own
    process (`tests.inprocess.AppServer`): HTTP clients, the operator's CLI on its data dir, and
    its usage records."""

    data_dir: Path
    env: dict[str, str] | None
    base_url: str  # e.g. http://127.0.0.1:PORT
    openai_url: str  # base_url + /v1
    zhipu_url: str  # base_url + /api/paas/v4

    def client(self, **options) -> httpx.Client:  # type: ignore[no-untyped-def]
        """An HTTP client of this server; `options` are httpx.Client's."""
        raise NotImplementedError

    def alive(self) -> bool:
        """Whether the server still serves."""
        raise NotImplementedError

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


class Server(GlmaasProcess, ServerUnderTest):
    """A running `glmaas serve` process."""

    def client(self, **options) -> httpx.Client:  # type: ignore[no-untyped-def]
        return httpx.Client(base_url=self.base_url, **options)


def start_server(data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> Server:
    """Start `glmaas serve` with `args` and wait until it answers."""
    server = start_glmaas(data_dir, *args, env=env, cwd=ROOT, timeout=timeout, cls=Server)
    assert isinstance(server, Server)
    return server


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
