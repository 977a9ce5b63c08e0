"""Servers as processes, for tests and benchmarks: a free port, start, wait until ready, stop,
and the log to show when something went wrong.

`start_process` runs any server (glmaas, a peer, a mock upstream); `start_glmaas` runs
`python -m glmaas serve` on a data dir and a free port and waits for its `/healthz`, which answers
only once the store is migrated, recovery has run and every model is loaded.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

LOCALHOST = "127.0.0.1"
# Readiness is asked of the server directly, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerFailed(RuntimeError):
    """A server exited, or did not answer, before it was ready; the message ends with its log."""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """One server process: its command, its log file and the URL that says it is ready.

    Its output (stdout and stderr) goes to `log`; without one, to a file in a temporary folder
    removed when the server stops. Use `start_process`, or `start()` then `wait_ready()`; `stop()`
    (or leaving a `with` block) terminates it, then kills it if it does not exit in time.
    """

    def __init__(self, name: str, argv: Sequence[str], *, ready_url: str, log: Path | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name, self.argv, self.ready_url = name, list(argv), ready_url
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._scratch: Path | None = None
        if log is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"{name}-log-"))
            log = self._scratch / f"{name}.log"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Start the process; it does not wait for the server to answer."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.cwd)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        """Whether `ready_url` answers 200 now."""
        try:
            with _DIRECT.open(self.ready_url, timeout=2) as response:
                return response.status == 200
        except (OSError, http.client.HTTPException):
            return False

    def wait_ready(self, timeout: float = 60.0, poll: float = 0.1) -> None:
        """Return once `ready_url` answers 200; stop the server and raise `ServerFailed` (with the
        end of its log) if it exits first or does not answer within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.answers():
            if not self.alive():
                code, tail = self.proc.returncode if self.proc else None, self.log_tail()
                self.stop()
                raise ServerFailed(f"{self.name} exited with status {code}; its log:\n{tail}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServerFailed(f"{self.name}: no answer from {self.ready_url} in {timeout:g} s; "
                                   f"its log:\n{tail}")
            time.sleep(poll)

    def log_tail(self, chars: int = 4000) -> str:
        """The last `chars` characters of the server's output."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; safe to call twice."""
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_process(name: str, argv: Sequence[str], *, ready_url: str, timeout: float = 60.0,
                  **options) -> ServerProcess:  # type: ignore[no-untyped-def]
    """Start a server and wait until `ready_url` answers 200 (see `ServerProcess` for `options`)."""
    server = ServerProcess(name, argv, ready_url=ready_url, **options).start()
    server.wait_ready(timeout)
    return server


class GlmaasProcess(ServerProcess):
    """`glmaas serve` on a data dir: its port, data dir and the bases of both dialects' URLs."""

    def __init__(self, data_dir: Path, argv: Sequence[str], *, host: str, port: int,
                 **options) -> None:  # type: ignore[no-untyped-def]
        self.data_dir, self.host, self.port = data_dir, host, port
        super().__init__("glmaas", argv, ready_url=f"{self.base_url}/healthz", **options)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def zhipu_url(self) -> str:
        return f"{self.base_url}/api/paas/v4"


def glmaas_command(data_dir: Path, *args: str, host: str = LOCALHOST, port: int) -> list[str]:
    """The command line of `glmaas serve` on `data_dir`, `host:port`, with more `args`."""
    return [sys.executable, "-m", "glmaas", "serve", "--host", host, "--port", str(port),
            "--data-dir", str(data_dir), *args]


def start_glmaas(data_dir: Path, *args: str, env: Mapping[str, str] | None = None,
                 host: str = LOCALHOST, log: Path | None = None, cwd: Path | None = None,
                 prefix: Sequence[str] = (), timeout: float = 60.0,
                 cls: type[GlmaasProcess] = GlmaasProcess) -> GlmaasProcess:
    """`glmaas serve` on `data_dir` (created if missing) and a free port, with more `args` and
    `env` added to this process's environment, ready when this returns. Its log is
    `data_dir/server-PORT.log` unless `log` is given; `prefix` goes before the command (e.g.
    `taskset -c 0`); `cls` may be a subclass that adds what its caller needs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    argv = [*prefix, *glmaas_command(data_dir, *args, host=host, port=port)]
    server = cls(data_dir, argv, host=host, port=port, log=log or data_dir / f"server-{port}.log",
                 env={**os.environ, **(env or {})}, cwd=cwd)
    server.start().wait_ready(timeout)
    return server
