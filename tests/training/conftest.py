import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"


def run_cli(*args: str, timeout: int = 120, threads: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "glmaas", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A 60 KB slice of Tiny Shakespeare: enough for a tokenizer and a few training steps."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text((DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path
