"""Picking the next token from a row of logits: greedy, temperature, top-p, per-sequence seed.

Numpy over the logits row that llama.cpp leaves in its output buffer; measured against llama.cpp's
own sampler chain (`python -m glmaas.benchmarks.sampling`, figures in docs/performance.md). Every
pass over the whole 49,152-token SmolLM2 vocabulary is a vectorised one; nothing sorts it:

- greedy is one `argmax`;
- full-distribution sampling finds the drawn token by block sums, not by a cumulative sum of the
  whole row (which numpy cannot vectorise);
- top-p sorts only the tokens within a factor of the most likely one, widening the cut until they
  hold `top_p` of the mass — every token outside is less likely than every token inside, so the
  nucleus is exactly the one a full sort would find.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 256
# Relative probabilities at which top-p cuts its candidates, tried in turn.
_TOP_P_CUTS = (1e-4, 1e-8, 0.0)


class Sampler:
    """One sequence's token picker. `seed` makes its choices reproducible; each sequence has its
    own generator, so what one request draws never depends on what else is in the batch."""

    def __init__(self, temperature: float, top_p: float, seed: int | None) -> None:
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self._rng = np.random.default_rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def sample(self, logits: np.ndarray) -> int:
        """The next token id from one float32 row of logits (the row is not modified)."""
        if self.greedy:
            return int(np.argmax(logits))
        scaled = logits * np.float32(1.0 / self.temperature)
        probs = np.exp(scaled - scaled.max())  # unnormalised; the best token has 1.0
        if 0.0 < self.top_p < 1.0:
            return self._sample_top_p(probs)
        return self._sample_all(probs)

    def _sample_all(self, probs: np.ndarray) -> int:
        n = len(probs)
        pad = (-n) % _BLOCK
        blocks = (np.concatenate([probs, np.zeros(pad, probs.dtype)]) if pad else probs).reshape(-1, _BLOCK)
        block_cdf = np.cumsum(blocks.sum(axis=1, dtype=np.float64))
        u = self._rng.random() * block_cdf[-1]
        b = min(int(np.searchsorted(block_cdf, u, side="right")), len(block_cdf) - 1)
        before = block_cdf[b - 1] if b else 0.0
        within = np.cumsum(blocks[b], dtype=np.float64)
        i = min(int(np.searchsorted(within, u - before, side="right")), _BLOCK - 1)
        return min(b * _BLOCK + i, n - 1)

    def _sample_top_p(self, probs: np.ndarray) -> int:
        total = float(probs.sum(dtype=np.float64))
        need = self.top_p * total
        for cut in _TOP_P_CUTS:
            cand = np.flatnonzero(probs >= cut) if cut > 0 else np.arange(len(probs))
            p = probs[cand].astype(np.float64)
            if cut == 0.0 or p.sum() >= need:
                break
        order = np.argsort(-p, kind="stable")
        cdf = np.cumsum(p[order])
        # The smallest head whose mass reaches top_p (never empty).
        n_keep = min(int(np.searchsorted(cdf, need, side="left")) + 1, len(order))
        u = self._rng.random() * cdf[n_keep - 1]
        j = min(int(np.searchsorted(cdf[:n_keep], u, side="right")), n_keep - 1)
        return int(cand[order[j]])
