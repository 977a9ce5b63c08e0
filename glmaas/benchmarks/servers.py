"""Start the servers a benchmark compares, each as its own process on a free local port (with the
server harness of `glmaas.benchmarks.harness`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from glmaas.benchmarks.harness import LOCALHOST, free_port, start_glmaas, start_process
from glmaas.engines.registry import DEFAULT_MODEL_ID

READY_TIMEOUT_S = 120.0  # loading a GGUF on a busy machine


@dataclass(frozen=True)
class Server:
    name: str
    base_url: str  # up to and including /v1
    api_key: str
    model: str
    pid: int


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
        log = Path(log_path) if log_path else None
        with start_glmaas(Path(data_dir), "--no-default-model", "--model", f"{model_id}={spec}", env=env,
                          log=log, timeout=READY_TIMEOUT_S) as server:
            yield Server("glmaas", server.openai_url, key, model_id, server.pid)


@contextlib.contextmanager
def llama_cpp_server(model_path: Path, threads: int | None, n_ctx: int = 2048,
                     log_path: str | None = None) -> Iterator[Server]:
    """llama-cpp-python's own OpenAI server, set up at its best for streaming benchmarks: a new
    request does not interrupt the one running (`--interrupt_requests False`), the thread count
    that suits the machine (None: its own default), and the chat template from the GGUF; weights
    loaded as glmaas's engine loads them (`glmaas.benchmarks.llama_cpp_server`)."""
    port = free_port()
    argv = [sys.executable, "-m", "glmaas.benchmarks.llama_cpp_server", "--model", str(model_path),
            "--model_alias", DEFAULT_MODEL_ID, "--host", LOCALHOST, "--port", str(port),
            "--n_ctx", str(n_ctx), "--interrupt_requests", "False"]
    if threads is not None:
        argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    base_url = f"http://{LOCALHOST}:{port}/v1"
    with start_process("llama_cpp.server", argv, ready_url=f"{base_url}/models",
                       log=Path(log_path) if log_path else None, timeout=READY_TIMEOUT_S) as server:
        yield Server("llama_cpp.server", base_url, "", DEFAULT_MODEL_ID, server.pid)


@contextlib.contextmanager
def infinity_server(install_path: str, model_folder: str, model_id: str) -> Iterator[Server]:
    """infinity-emb's embedding server (torch engine, CPU) on a local model folder, run from the
    folder `install_path` where it was installed apart (`pip install --target`): its pins differ
    from glmaas's, so that folder goes first on its `PYTHONPATH`."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([install_path, *sys.path]), "HF_HUB_OFFLINE": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    argv = [sys.executable, "-m", "infinity_emb.cli", "v2", "--model-id", model_folder, "--served-model-name",
            model_id, "--engine", "torch", "--device", "cpu", "--port", str(port), "--host", LOCALHOST,
            "--no-bettertransformer"]
    base_url = f"http://{LOCALHOST}:{port}"
    with start_process("infinity", argv, ready_url=f"{base_url}/models", env=env, timeout=300) as server:
        yield Server("infinity", base_url, "", model_id, server.pid)
