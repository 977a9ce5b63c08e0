"""Tiny GLM checkpoints for the tests of the GLM engine and of the API in front of it: one with
random weights (built in well under a second) and one trained for a few seconds by `glmaas train`,
which has learned to close its blanks with `[E]`, so that prompts with several blanks fill each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from glmaas.model.glm import GLM, GLMConfig
from glmaas.model.glm_checkpoint import save_checkpoint
from glmaas.model.glm_tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / ".." / "shared" / "data" / "tinyshakespeare.txt"


def random_checkpoint(folder: Path, max_seq_len: int = 64) -> Path:
    """A 2-layer GLM with random weights and a 300-token BPE over a slice of Tiny Shakespeare."""
    tokenizer = train_tokenizer([SHAKESPEARE.read_text(encoding="utf-8")[:20_000]], vocab_size=300)
    torch.manual_seed(0)
    config = GLMConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, max_seq_len=max_seq_len)
    return save_checkpoint(folder, GLM(config), tokenizer)


def trained_checkpoint(folder: Path, steps: int = 150) -> Path:
    """glm-micro trained on token-level blank infilling over 60 KB of Tiny Shakespeare (~10 s)."""
    corpus = folder / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "glmaas", "train", "--data", str(corpus), "--out", str(folder / "run"),
         "--model", "glm-micro", "--objective", "glm-token", "--vocab-size", "400", "--seq-len", "64",
         "--steps", str(steps), "--lr", "3e-3", "--warmup", "10", "--eval-every", "100000", "--threads", "1",
         "--no-progress"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, check=True,
        capture_output=True, timeout=300)
    return folder / "run" / "checkpoint"
