"""Picking the next token from a row of logits: greedy, temperature, top-p, per-sequence seed.

Numpy over the logits row that llama.cpp leaves in its output buffer. Measured against
llama.cpp's own sampler chain (top-p → temp → dist) on the 49,152-token SmolLM2 vocabulary, see
docs/performance.md: greedy is one `argmax`; top-p avoids sorting the whole vocabulary by sorting
only the best candidates and widening when they do not hold `top_p` of the mass.
"""

from __future__ import annotations

import numpy as np

# Candidates sorted first for top-p; a sharp distribution needs only a few, a flat one falls
# back to sorting everything.
_TOP_P_CANDIDATES = 256


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
        """The next token id from one float32 row of logits (not modified)."""
        if self.greedy:
            return int(np.argmax(logits))
        scaled = logits / np.float32(self.temperature)
        if 0.0 < self.top_p < 1.0:
            return self._sample_top_p(scaled)
        probs = np.exp(scaled - scaled.max())
        cdf = np.cumsum(probs, dtype=np.float64)
        u = self._rng.random() * cdf[-1]
        return int(min(np.searchsorted(cdf, u, side="right"), len(cdf) - 1))

    def _sample_top_p(self, scaled: np.ndarray) -> int:
        probs = np.exp(scaled - scaled.max()).astype(np.float64)
        total = probs.sum()
        k = min(_TOP_P_CANDIDATES, len(probs))
        while True:
            if k < len(probs):
                idx = np.argpartition(probs, -k)[-k:]
            else:
                idx = np.arange(len(probs))
            order = idx[np.argsort(-probs[idx], kind="stable")]
            cdf = np.cumsum(probs[order]) / total
            if cdf[-1] >= self.top_p or k >= len(probs):
                break
            k = len(probs)
        # The smallest head whose mass reaches top_p (always at least one token).
        n_keep = int(np.searchsorted(cdf, self.top_p, side="left")) + 1
        n_keep = min(n_keep, len(order))
        kept = cdf[:n_keep]
        u = self._rng.random() * kept[-1]
        return int(order[min(np.searchsorted(kept, u, side="right"), n_keep - 1)])
