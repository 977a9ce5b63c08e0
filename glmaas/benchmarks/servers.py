"""Start the servers a benchmark compares, each as its own process on a free local port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from glmaas.engines.registry import DEFAULT_MODEL_ID


@dataclass(frozen=True)
class Server:
    name: str
    base_url: str  # up to and including /v1
    api_key: str
    model: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base_url: str, api_key: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll `GET /models` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/models", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{base_url} did not become ready in {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def glmaas_server(model_path: Path, engine_options: str = "", log_path: str | None = None) -> Iterator[Server]:
    """`glmaas serve` on a fresh data dir, the default model id served from `model_path` with
    llamacpp `engine_options` (e.g. "threads=2,slots=16"), and a new key for it."""
    spec = f"llamacpp:{model_path}" + (f",{engine_options}" if engine_options else "")
    with glmaas_serving(DEFAULT_MODEL_ID, spec, log_path) as server:
        yield server


@contextlib.contextmanager
def glmaas_serving(model_id: str, spec: str, log_path: str | None = None) -> Iterator[Server]:
    """`glmaas serve` on a fresh data dir serving only `--model model_id=spec`, and a new key."""
    with tempfile.TemporaryDirectory(prefix="glmaas-bench-") as data_dir:
        env = {**os.environ, "GLMAAS_DATA_DIR": data_dir}
        created = subprocess.run(
            [sys.executable, "-m", "glmaas", "keys", "create", "--data-dir", data_dir],
            capture_output=True, text=True, check=True, env=env,
        )
        key = created.stdout.strip().splitlines()[-1]
        port = free_port()
        log = open(log_path or os.devnull, "w")  # noqa: SIM115 - closed when the server stops
        proc = subprocess.Popen(
            [sys.executable, "-m", "glmaas", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", data_dir, "--no-default-model", "--model", f"{model_id}={spec}"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            wait_ready(base_url, key, proc)
            yield Server("glmaas", base_url, key, model_id, proc.pid)
        finally:
            _stop(proc)
            log.close()


@contextlib.contextmanager
def llama_cpp_server(model_path: Path, threads: int, n_ctx: int = 2048, log_path: str | None = None) -> Iterator[Server]:
    """llama-cpp-python's own OpenAI server, set up at its best for streaming benchmarks: a new
    request does not interrupt the one running (`--interrupt_requests False`), the thread count
    that suits the machine, and the chat template from the GGUF."""
    port = free_port()
    log = open(log_path or os.devnull, "w")  # noqa: SIM115 - closed when the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
         "--model_alias", DEFAULT_MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
         "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
         "--interrupt_requests", "False"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_ready(base_url, "", proc)
        yield Server("llama_cpp.server", base_url, "", DEFAULT_MODEL_ID, proc.pid)
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def infinity_server(install_path: str, model_folder: str, model_id: str) -> Iterator[Server]:
    """infinity-emb's embedding server (torch engine, CPU) on a local model folder, run from the
    folder `install_path` where it was installed apart (`pip install --target`): its pins differ
    from glmaas's, so that folder goes first on its `PYTHONPATH`."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([install_path, *sys.path]), "HF_HUB_OFFLINE": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "infinity_emb.cli", "v2", "--model-id", model_folder, "--served-model-name",
         model_id, "--engine", "torch", "--device", "cpu", "--port", str(port), "--host", "127.0.0.1",
         "--no-bettertransformer"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, "", proc, timeout_s=300)
        yield Server("infinity", base_url, "", model_id, proc.pid)
    finally:
        _stop(proc)
