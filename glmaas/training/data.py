"""Corpus -> memory-mapped token shards -> deterministic batches.

A corpus is any mix of `.txt` files (one stream each) and `.jsonl` files (one document per line,
text under "text"); documents are joined with `<|endoftext|>`. Tokens are written as uint16 (or
uint32 for vocabularies past 65,535) `.bin` shards that `np.memmap` reads back without loading.

Batches are a pure function of (seed, step, sample index): each sample draws its window and its
masking from its own RNG. That makes resume exact and makes the samples independent of how many
processes share a global batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from glmaas.training.objectives import collate

SHARD_TOKENS = 1 << 24  # 16M tokens (32 MiB at uint16) per shard


def read_documents(path: str | Path) -> Iterator[str]:
    """Documents of one corpus file: a .jsonl file gives one per line, anything else one."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]
    else:
        yield path.read_text(encoding="utf-8")


def _lines(text: str, chunk: int = 2000) -> Iterator[str]:
    """Cut a long document into line-aligned chunks so `encode_batch` can use every core."""
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), chunk):
        yield "".join(lines[i : i + chunk])


def tokenize_to_shards(paths: list[str | Path], tokenizer, out_dir: str | Path, shard_tokens: int = SHARD_TOKENS) -> Path:
    """Tokenise `paths` into `out_dir/shard_XXXXX.bin` + `meta.json`; returns out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
    buf: list[int] = []
    shards: list[str] = []

    def flush(final: bool) -> None:
        nonlocal buf
        while len(buf) >= shard_tokens or (final and buf):
            name = f"shard_{len(shards):05d}.bin"
            np.asarray(buf[:shard_tokens], dtype=dtype).tofile(out_dir / name)
            shards.append(name)
            buf = buf[shard_tokens:]

    for path in paths:
        for doc in read_documents(path):
            for ids in tokenizer.encode_batch(list(_lines(doc))):
                buf.extend(ids)
            buf.append(tokenizer.special.eod)
            flush(final=False)
    flush(final=True)
    meta = {"dtype": np.dtype(dtype).name, "shards": shards, "sources": [Path(p).name for p in paths]}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return out_dir


class TokenShards:
    """All shards of a directory as one token stream (memory-mapped, read-only)."""

    def __init__(self, shard_dir: str | Path):
        shard_dir = Path(shard_dir)
        meta = json.loads((shard_dir / "meta.json").read_text())
        self.arrays = [np.memmap(shard_dir / s, dtype=meta["dtype"], mode="r") for s in meta["shards"]]
        self.sizes = np.array([len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def split(self, lo: float, hi: float) -> "TokenShards":
        """The [lo, hi) fraction of every shard, e.g. (0.95, 1.0) as a held-out tail."""
        part = object.__new__(TokenShards)
        part.arrays = [a[int(lo * len(a)) : int(hi * len(a))] for a in self.arrays]
        part.sizes = np.array([len(a) for a in part.arrays])
        return part

    def window(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """A random window of n tokens, inside one shard (shards are 16M tokens, so no loss)."""
        p = np.maximum(self.sizes - n, 0) / max(1, np.maximum(self.sizes - n, 0).sum())
        shard = int(rng.choice(len(self.arrays), p=p)) if len(self.arrays) > 1 else 0
        arr = self.arrays[shard]
        if len(arr) < n:
            raise ValueError(f"corpus has {len(arr)} tokens, fewer than a window of {n}")
        start = int(rng.integers(0, len(arr) - n + 1))
        return np.asarray(arr[start : start + n], dtype=np.int64)


def sample_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The RNG of global sample `index` of `step`: independent of world size and of resume."""
    return np.random.default_rng([seed, step, index])


def get_batch(shards: TokenShards, objective, seq_len: int, seed: int, step: int, indices: range, pad_id: int) -> dict[str, np.ndarray]:
    """The samples `indices` of global batch `step`, collated to (len(indices), seq_len)."""
    samples = []
    for i in indices:
        rng = sample_rng(seed, step, i)
        samples.append(objective.build(rng, shards.window(rng, objective.raw_len(seq_len))))
    return collate(samples, seq_len, pad_id)
