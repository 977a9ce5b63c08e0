"""Picking the next token from a row of logits, one sequence at a time.

The steps, in vLLM's order: `logit_bias` is added; the grammar mask (constrained decoding) sets
every token that would leave the grammar to -inf; the repetition penalty (Hugging Face's: divide a
positive logit, multiply a negative one, for tokens of the prompt or the output) and the
frequency and presence penalties (OpenAI's: subtract `count * frequency + presence` for tokens of
the output) apply; then greedy takes the `argmax`, or temperature scales the row and top-k, min-p
and top-p cut it before the draw.

Logprobs are computed from the row after bias, mask and penalties and before temperature and the
top-k/min-p/top-p cuts: the distribution the model, as adjusted by the request, puts on the next
token (vLLM reports the raw row before all of these by default; we include the adjustments that
change what may be chosen, so a token the grammar forbids never shows as likely, and leave out
temperature so greedy requests get logprobs too and they compare across temperatures).

Numpy over the logits row that llama.cpp leaves in its output buffer (never modified: a request
that adjusts it works on a copy); measured against llama.cpp's own sampler chain
(`python -m glmaas.benchmarks.sampling`, figures in docs/performance.md). Every pass over the
whole 49,152-token SmolLM2 vocabulary is a vectorised one; nothing sorts it:

- greedy is one `argmax`;
- full-distribution sampling finds the drawn token by block sums, not by a cumulative sum of the
  whole row (which numpy cannot vectorise);
- top-p sorts only the tokens within a factor of the most likely one, widening the cut until they
  hold `top_p` of the mass — every token outside is less likely than every token inside, so the
  nucleus is exactly the one a full sort would find.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from glmaas.engines.base import SamplingParams

if TYPE_CHECKING:
    from glmaas.engines.constrained import GrammarMatcher

_BLOCK = 256
# Relative probabilities at which top-p cuts its candidates, tried in turn.
_TOP_P_CUTS = (1e-4, 1e-8, 0.0)


@dataclass(frozen=True)
class Pick:
    """A chosen token; with logprobs when the request asked for them (`top`: (token id, logprob)
    of the most likely alternatives, most likely first)."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


class Sampler:
    """One sequence's token picker (see the module docstring for the order of its steps).

    `seed` makes its choices reproducible; each sequence has its own generator, penalty counts and
    grammar matcher, so what one request draws never depends on what else is in the batch."""

    def __init__(self, params: SamplingParams, prompt: Iterable[int] = (),
                 grammar: GrammarMatcher | None = None) -> None:
        self.temperature = float(params.temperature)
        self.top_p = float(params.top_p)
        self.top_k = int(params.top_k)
        self.min_p = float(params.min_p)
        self.frequency_penalty = float(params.frequency_penalty)
        self.presence_penalty = float(params.presence_penalty)
        self.repetition_penalty = float(params.repetition_penalty)
        self.n_logprobs = params.logprobs
        self.grammar = grammar
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64, count=len(params.logit_bias))
        self._bias = np.fromiter(params.logit_bias.values(), dtype=np.float32, count=len(params.logit_bias))
        self._counts: dict[int, int] = {}  # output tokens, for the frequency and presence penalties
        self._seen: set[int] = set(prompt) if self.repetition_penalty != 1.0 else set()
        self._rng = np.random.default_rng(params.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def sample(self, logits: np.ndarray) -> Pick:
        """The next token from one float32 row of logits (the row is not modified); the sampler
        then counts it as generated and advances its grammar past it."""
        row = self._adjusted(logits)
        if self.greedy:
            token = int(np.argmax(row))
        else:
            token = self._draw(row)
        pick = self._with_logprobs(row, token) if self.n_logprobs is not None else Pick(token)
        self._accept(token)
        return pick

    def _adjusted(self, logits: np.ndarray) -> np.ndarray:
        """Bias, grammar mask and penalties, on a copy when any applies."""
        row = logits
        if len(self._bias_ids):
            row = row.copy()
            row[self._bias_ids] += self._bias
        if self.grammar is not None:
            row = np.where(self.grammar.allowed(), row, np.float32(-np.inf))
        if self._seen and self.repetition_penalty != 1.0:
            row = row if row is not logits else row.copy()
            ids = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
            seen = row[ids]
            row[ids] = np.where(seen > 0, seen / self.repetition_penalty, seen * self.repetition_penalty)
        if self._counts and (self.frequency_penalty or self.presence_penalty):
            row = row if row is not logits else row.copy()
            ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            row[ids] -= counts * self.frequency_penalty + self.presence_penalty
        return row

    def _draw(self, row: np.ndarray) -> int:
        scaled = row * np.float32(1.0 / self.temperature)
        probs = np.exp(scaled - scaled.max())  # unnormalised; the best token has 1.0
        if 0 < self.top_k < len(probs):
            kth = np.partition(probs, -self.top_k)[-self.top_k]
            probs[probs < kth] = 0.0
        if self.min_p > 0.0:
            probs[probs < self.min_p] = 0.0  # relative to the best token, whose weight is 1.0
        if 0.0 < self.top_p < 1.0:
            return self._sample_top_p(probs)
        return self._sample_all(probs)

    def _with_logprobs(self, row: np.ndarray, token: int) -> Pick:
        best = row.max()
        log_total = float(best) + float(np.log(np.exp(row - best, dtype=np.float64).sum()))
        top: tuple[tuple[int, float], ...] = ()
        k = min(int(self.n_logprobs or 0), len(row))
        if k:
            head = np.argpartition(-row, k - 1)[:k]
            head = head[np.argsort(-row[head], kind="stable")]
            top = tuple((int(t), float(row[t]) - log_total) for t in head if np.isfinite(row[t]))
        return Pick(token, float(row[token]) - log_total, top)

    def _accept(self, token: int) -> None:
        if self.frequency_penalty or self.presence_penalty:
            self._counts[token] = self._counts.get(token, 0) + 1
        if self.repetition_penalty != 1.0:
            self._seen.add(token)
        if self.grammar is not None:
            self.grammar.accept(token)

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
