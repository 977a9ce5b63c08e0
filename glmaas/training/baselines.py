"""Count models: the unigram and bigram baselines that every probe is reported beside.

A probe result means little on its own: a model that fills blanks "at the unigram level" has
learned word frequencies and nothing about the blank's context. Each count model is fitted on the
training tokens and scores a span the way a left-to-right model would, teacher-forced.
"""

from __future__ import annotations

import numpy as np


class CountModel:
    """Unigram (order 1) or bigram (order 2) token model with additive smoothing.

    The bigram is smoothed towards the unigram: p(t | p) = (c(p, t) + beta * p1(t)) / (c(p) + beta).
    """

    def __init__(self, tokens: np.ndarray, vocab_size: int, order: int = 1, alpha: float = 0.5, beta: float = 10.0):
        if order not in (1, 2):
            raise ValueError("order must be 1 (unigram) or 2 (bigram)")
        tokens = np.asarray(tokens, dtype=np.int64)
        self.order, self.vocab_size, self.beta = order, vocab_size, beta
        self.counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
        self.unigram_logp = np.log((self.counts + alpha) / (self.counts.sum() + alpha * vocab_size))
        if order == 2:
            keys, n = np.unique(tokens[:-1] * vocab_size + tokens[1:], return_counts=True)
            self.pair_keys, self.pair_counts = keys, n.astype(np.float64)
            self.prev_counts = np.bincount(tokens[:-1], minlength=vocab_size).astype(np.float64)

    @property
    def name(self) -> str:
        return "unigram" if self.order == 1 else "bigram"

    def logp(self, prev: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """log p(tok | prev), elementwise (prev is ignored by the unigram)."""
        tok = np.asarray(tok, dtype=np.int64)
        p1 = self.unigram_logp[tok]
        if self.order == 1:
            return p1
        prev = np.asarray(prev, dtype=np.int64)
        keys = prev * self.vocab_size + tok
        at = np.clip(np.searchsorted(self.pair_keys, keys), 0, len(self.pair_keys) - 1)
        pair = np.where(self.pair_keys[at] == keys, self.pair_counts[at], 0.0)
        return np.log((pair + self.beta * np.exp(p1)) / (self.prev_counts[prev] + self.beta))

    def sequence_logp(self, x: np.ndarray, scored: np.ndarray) -> np.ndarray:
        """Log-probabilities of the tokens of x where `scored` (never index 0), each given the one before."""
        x = np.asarray(x, dtype=np.int64)
        at = np.flatnonzero(scored)
        return self.logp(x[at - 1], x[at])
