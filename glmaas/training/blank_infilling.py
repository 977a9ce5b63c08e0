"""Autoregressive blank infilling: spans, Part A / Part B, 2D positions (glm.md §1.2–1.6).

Follows `ConstructBlockStrategy` of THUDM/GLM `blocklm_utils.py`. Everything here is pure numpy on
one sample; `make_block_data` is the heart and reproduces the worked example of glm.md §1.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from glmaas.model.glm_tokenizer import SpecialIds

# Poisson(3) weights for span lengths 1..39, as `poisson.pmf(i, 3) for i in range(1, 40)`.
_LENGTHS = np.arange(1, 40)


@lru_cache(maxsize=8)
def poisson_weights(lam: float = 3.0) -> np.ndarray:
    logp = _LENGTHS * np.log(lam) - lam - np.array([np.sum(np.log(np.arange(1, k + 1))) for k in _LENGTHS])
    w = np.exp(logp)
    return w / w.sum()


@dataclass
class Sample:
    """One training sequence; every array has the same length."""

    tokens: np.ndarray  # input ids
    targets: np.ndarray  # position-aligned (not shifted): token i is trained to predict targets[i]
    loss_mask: np.ndarray  # 1 where the loss counts
    position_ids: np.ndarray  # position in the corrupted text
    block_position_ids: np.ndarray  # 0 in Part A; 1, 2, ... inside a blank
    sep: int  # length of Part A: bidirectional before, causal after

    def __len__(self) -> int:
        return len(self.tokens)


def sample_span_lengths(rng: np.random.Generator, n: int, ratio: float = 0.15, lam: float = 3.0) -> list[int]:
    """Poisson(lam) lengths in 1..39, drawn until at least int(ratio * n) tokens are covered."""
    w = poisson_weights(lam)
    lengths: list[int] = []
    covered = 0
    while covered < int(ratio * n):
        k = int(rng.choice(_LENGTHS, p=w))
        lengths.append(k)
        covered += k
    return lengths


def place_spans(rng: np.random.Generator, n: int, lengths: list[int], offset: int = 0) -> list[tuple[int, int]]:
    """Place spans uniformly in [offset, offset + n), non-overlapping and non-adjacent (`sample_spans`
    in THUDM/GLM). Returns sorted half-open (start, end) ranges. Lengths that cannot fit are dropped
    from the end.
    """
    lengths = list(lengths)
    while lengths and n - sum(lengths) - (len(lengths) - 1) < 0:
        lengths.pop()
    if not lengths:
        return []
    lengths = [int(x) for x in rng.permutation(lengths)]
    free = n - sum(lengths) - len(lengths) + 1  # gap slots left after the mandatory 1-token gaps
    places = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    spans = []
    for place, k in zip(places, lengths):
        start = offset + int(place)
        spans.append((start, start + k))
        offset += k + 1
    return spans


def document_ranges(tokens: np.ndarray, ids: SpecialIds) -> list[tuple[int, int]]:
    """Where blanks may go, as (offset, length): each document between `<|endoftext|>` tokens,
    after a leading `[CLS]`, and never the sample's last token (`sample_span_in_document`)."""
    tokens = np.asarray(tokens)
    n = len(tokens)
    bounds = [-1] + np.flatnonzero(tokens == ids.eod).tolist()
    out, end = [], n
    for eod in reversed(bounds):
        start = eod + 1
        if start < n and tokens[start] == ids.cls:
            start += 1
        length = end - start
        if end == n and length > 0:
            length -= 1  # the last token of the sample is never masked
        out.append((start, max(length, 0)))
        end = eod
    return out


def spans_in_documents(
    rng: np.random.Generator, tokens: np.ndarray, lengths: list[int], ids: SpecialIds, ratio: float = 0.15
) -> list[tuple[int, int]]:
    """Place span `lengths` inside documents, never across `<|endoftext|>`: every document but the
    longest gets up to `ratio` of its length, the longest takes what is left (what does not fit is
    dropped). Sorted half-open ranges."""
    lengths = [int(x) for x in rng.permutation(lengths)]
    docs = sorted(document_ranges(tokens, ids), key=lambda d: d[1])
    spans: list[tuple[int, int]] = []
    i = 0
    for d, (offset, length) in enumerate(docs):
        take, covered = 0, 0
        budget = int(length * ratio)
        while i + take < len(lengths):
            k = lengths[i + take]
            fits = covered + k + take <= length if d == len(docs) - 1 else covered + k <= budget
            if not fits:
                break
            covered += k
            take += 1
        if take:
            spans += place_spans(rng, length, lengths[i : i + take], offset)
            i += take
    return sorted(spans)


def make_block_data(
    tokens: np.ndarray,
    spans: list[tuple[int, int]],
    order: list[tuple[int, int]],
    ids: SpecialIds,
    mask_id: int | None = None,
) -> Sample:
    """Part A = text with each span replaced by one mask; Part B = `[S] span` per span in `order`.

    Targets in Part B are `span [E]`; the loss falls on Part B only. Positions are positions in the
    corrupted text; every token of a span's Part B gets its mask's position, and block positions
    count 1, 2, ... through the piece.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    mask_id = ids.mask if mask_id is None else mask_id
    n = len(tokens)
    pos = np.ones(n, dtype=np.int64)
    for s, e in spans:
        pos[s + 1 : e] = 0
    pos = np.cumsum(pos) - 1  # each span collapses to one slot

    a_tok, a_pos, last = [], [], 0
    for s, e in sorted(spans):
        a_tok += [tokens[last:s], [mask_id]]
        a_pos += [pos[last:s], [pos[s]]]
        last = e
    a_tok = _cat(a_tok + [tokens[last:]])
    a_pos = _cat(a_pos + [pos[last:]])

    b_tok, b_tgt, b_pos, b_blk = [], [], [], []
    for s, e in order:
        piece = tokens[s:e]
        b_tok += [[ids.sop], piece]
        b_tgt += [piece, [ids.eop]]
        b_pos.append(np.full(e - s + 1, pos[s]))
        b_blk.append(np.arange(1, e - s + 2))
    b_tok, b_tgt, b_pos, b_blk = _cat(b_tok), _cat(b_tgt), _cat(b_pos), _cat(b_blk)

    sep = len(a_tok)
    return Sample(
        tokens=np.concatenate([a_tok, b_tok]),
        targets=np.concatenate([a_tok, b_tgt]),
        loss_mask=np.concatenate([np.zeros(sep, np.int64), np.ones(len(b_tok), np.int64)]),
        position_ids=np.concatenate([a_pos, b_pos]),
        block_position_ids=np.concatenate([np.zeros(sep, np.int64), b_blk]),
        sep=sep,
    )


def _cat(parts: list) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def token_infilling(
    rng: np.random.Generator, tokens: np.ndarray, ids: SpecialIds, ratio: float = 0.15, lam: float = 3.0, shuffle: bool = True
) -> Sample:
    """Token-level blank infilling: Poisson(lam) spans covering >= ratio of the sample, placed inside
    documents (never the `[CLS]` or the last token), `[MASK]`, shuffled Part B."""
    spans = spans_in_documents(rng, tokens, sample_span_lengths(rng, len(tokens), ratio, lam), ids, ratio)
    order = list(spans)
    if shuffle:
        order = [order[i] for i in rng.permutation(len(order))]
    return make_block_data(tokens, spans, order, ids, ids.mask)


def sentence_spans(tokens: np.ndarray, sentence_end: np.ndarray) -> list[tuple[int, int]]:
    """Sentences as half-open ranges; a sentence ends at (and includes) a sentence-end token."""
    ends = np.flatnonzero(np.isin(tokens, sentence_end)) + 1
    bounds = [0] + [int(e) for e in ends if e < len(tokens)] + [len(tokens)]
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


def sentence_infilling(
    rng: np.random.Generator, tokens: np.ndarray, ids: SpecialIds, sentence_end: np.ndarray, ratio: float = 0.15, shuffle: bool = True
) -> Sample:
    """Sentence-level: whole sentences, taken in random order until >= ratio covered, `[sMASK]`."""
    sentences = sentence_spans(tokens, sentence_end)
    chosen, covered = [], 0
    for i in rng.permutation(len(sentences)):
        if covered >= int(ratio * len(tokens)) and chosen:
            break
        chosen.append(sentences[i])
        covered += sentences[i][1] - sentences[i][0]
    spans = sorted(chosen)
    order = [spans[i] for i in rng.permutation(len(spans))] if shuffle else list(spans)
    return make_block_data(tokens, spans, order, ids, ids.smask)


def document_infilling(
    rng: np.random.Generator, tokens: np.ndarray, ids: SpecialIds, min_ratio: float = 0.5, suffix_prob: float = 0.5
) -> Sample:
    """Document-level `[gMASK]`: one blank of int(min_ratio * n) .. n - 2 tokens. With `suffix_prob`,
    and always when the sample holds more than one document, the blank is the suffix (generated
    without `[E]`); otherwise it is one span placed inside the document, `[gMASK]` in Part A and
    `[S] span [E]` in Part B, like a long token-level blank."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    if n < 3:
        return gmask_sample(tokens[:1], tokens[1:], ids)
    lo = min(max(1, int(min_ratio * n)), n - 2)
    g = int(rng.integers(lo, n - 2, endpoint=True))
    eods = np.flatnonzero(tokens == ids.eod)
    multi_document = bool(len(eods)) and eods[0] != n - 1
    if not multi_document and rng.random() >= suffix_prob:
        spans = spans_in_documents(rng, tokens, [g], ids)
        if spans:
            return make_block_data(tokens, spans, spans, ids, ids.gmask)
    return gmask_sample(tokens[: n - g], tokens[n - g :], ids)


def gmask_sample(prefix: np.ndarray, suffix: np.ndarray, ids: SpecialIds) -> Sample:
    """`prefix [gMASK] [S] suffix[:-1]` -> `prefix [gMASK] suffix` (glm.md §1.3, §1.6)."""
    prefix = np.asarray(prefix, dtype=np.int64)
    suffix = np.asarray(suffix, dtype=np.int64)
    p, g = len(prefix), len(suffix)
    a_tok = np.concatenate([prefix, [ids.gmask]]).astype(np.int64)
    return Sample(
        tokens=np.concatenate([a_tok, [ids.sop], suffix[:-1]]).astype(np.int64),
        targets=np.concatenate([a_tok, suffix]).astype(np.int64),
        loss_mask=np.concatenate([np.zeros(p + 1, np.int64), np.ones(g, np.int64)]),
        position_ids=np.concatenate([np.arange(p + 1), np.full(g, p)]).astype(np.int64),
        block_position_ids=np.concatenate([np.zeros(p + 1, np.int64), np.arange(1, g + 1)]),
        sep=p + 1,
    )
