"""Probes that compare objectives on one backbone (glm.md §2.3), each beside a unigram and a bigram
count model (`baselines.py`), so a number can be read against "knows only word frequencies".

- Span infilling: held-out Poisson(3) spans covering 15% of a window (never its first two or last
  token). GLM fills them as Part B (sees both sides); CLM scores each span from the left context
  only; MLM gets one `[MASK]` per span token (the oracle span length, which GLM is not given).
  Reported as per-token NLL, then by position in the span (first / middle / last token) and for
  one-token blanks.
- Neighbours: the first-token NLL again after the token just left and just right of every blank
  is replaced by a random token. A model that reads its blank's neighbours pays for it; one that
  fills blanks from word frequencies does not.
- Frequency-matched cloze: a one-token word whose evidence (the same word again) follows the blank;
  the three distractors are the words next to it in the training-frequency ranking, with the answer
  at a uniformly drawn place among them, so a unigram scorer is at chance (25%). GLM scores the
  candidate as a blank, MLM as a `[MASK]`, CLM as log p(candidate + right context | left) (and,
  for comparison, log p(candidate | left)).

Every model probe builds `Sample`s whose loss_mask marks the scored tokens; `score` returns their
log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from glmaas.model.glm_tokenizer import SpecialIds
from glmaas.training.baselines import CountModel
from glmaas.training.blank_infilling import Sample, gmask_sample, make_block_data, place_spans, sample_span_lengths
from glmaas.training.evaluate import forward_batch, to_tensors
from glmaas.training.objectives import collate, with_cls

PROBE_SEED = 20220522
FIRST_NORMAL_ID = 8  # ids below are special tokens; random replacements never use them


def family(objective: str) -> str:
    """Which scoring a model gets: 'glm', 'clm' or 'mlm'."""
    if objective == "clm":
        return "clm"
    return "mlm" if objective.startswith("mlm") else "glm"


@torch.no_grad()
def score(model, samples: list[Sample], seq_len: int, pad_id: int, batch_size: int = 64) -> list[np.ndarray]:
    """Per sample, the log-probabilities of its targets at its loss_mask positions."""
    model.eval()
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        batch = to_tensors(collate(chunk, seq_len, pad_id))
        logits, _ = forward_batch(model, batch)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, batch["targets"][..., None])[..., 0].numpy()
        mask = batch["loss_mask"].numpy().astype(bool)
        out += [logp[j][mask[j]] for j in range(len(chunk))]
    return out


def clm_sample(x: np.ndarray, scored: np.ndarray) -> Sample:
    """Causal LM over x; `scored` marks which tokens of x (never the first) are scored."""
    n = len(x) - 1
    return Sample(x[:-1], x[1:], scored[1:].astype(np.int64), np.arange(n), np.zeros(n, np.int64), 0)


def mlm_sample(x: np.ndarray, masked: np.ndarray, ids: SpecialIds) -> Sample:
    inp = np.where(masked, ids.mask, x)
    return Sample(inp, x.copy(), masked.astype(np.int64), np.arange(len(x)), np.zeros(len(x), np.int64), len(x))


def glm_infill_sample(x: np.ndarray, spans: list[tuple[int, int]], ids: SpecialIds) -> Sample:
    """Part B in left-to-right order; the `[E]` targets are not scored (others have no [E])."""
    s = make_block_data(x, spans, sorted(spans), ids)
    s.loss_mask = s.loss_mask * (s.targets != ids.eop)
    return s


def windows(tokens: np.ndarray, n: int, length: int, seed: int = PROBE_SEED) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - length, size=n)
    return [np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts]


# --- span infilling ------------------------------------------------------------------------------


@dataclass
class SpanItem:
    text: np.ndarray  # [CLS] + a held-out window
    spans: list[tuple[int, int]]  # sorted, non-adjacent; never the [CLS], the first word or the last token


SpanScorer = Callable[[list[SpanItem]], list[list[np.ndarray]]]  # item -> span -> per-token log-probs


def span_items(tokens: np.ndarray, ids: SpecialIds, seq_len: int, n: int = 64, seed: int = PROBE_SEED) -> list[SpanItem]:
    """n held-out windows with Poisson(3) spans covering 15%, sized to fit GLM's Part A + B in seq_len."""
    rng = np.random.default_rng(seed + 1)
    items = []
    for w in windows(tokens, n, int(seq_len * 0.8) - 1, seed):
        x = with_cls(w, ids)
        items.append(SpanItem(x, place_spans(rng, len(x) - 3, sample_span_lengths(rng, len(x)), offset=2)))
    return items


def corrupt_neighbours(items: list[SpanItem], vocab_size: int, seed: int = PROBE_SEED) -> list[SpanItem]:
    """The same items with the token just before and just after every span replaced by a random
    (different, non-special) token; the spans themselves are untouched."""
    rng = np.random.default_rng(seed + 3)
    out = []
    for it in items:
        x = it.text.copy()
        for s, e in it.spans:
            for j in (s - 1, e):
                if 0 < j < len(x):
                    x[j] = FIRST_NORMAL_ID + (x[j] - FIRST_NORMAL_ID + rng.integers(1, vocab_size - FIRST_NORMAL_ID)) % (vocab_size - FIRST_NORMAL_ID)
        out.append(SpanItem(x, it.spans))
    return out


def _scored(it: SpanItem) -> np.ndarray:
    m = np.zeros(len(it.text), bool)
    for s, e in it.spans:
        m[s:e] = True
    return m


def _split(logps: np.ndarray, spans: list[tuple[int, int]]) -> list[np.ndarray]:
    """Scored tokens come out in text order for every scorer (GLM's Part B is in sorted order)."""
    return np.split(logps, np.cumsum([e - s for s, e in spans])[:-1])


def model_span_scorer(model, fam: str, ids: SpecialIds, seq_len: int) -> SpanScorer:
    def run(items: list[SpanItem]) -> list[list[np.ndarray]]:
        samples = []
        for it in items:
            if fam == "glm":
                samples.append(glm_infill_sample(it.text, it.spans, ids))
            elif fam == "mlm":
                samples.append(mlm_sample(it.text, _scored(it), ids))
            else:  # CLM never saw [CLS]: it reads the window itself
                samples.append(clm_sample(it.text[1:], _scored(it)[1:]))
        return [_split(lp, it.spans) for lp, it in zip(score(model, samples, seq_len, ids.pad), items)]

    return run


def count_span_scorer(counts: CountModel) -> SpanScorer:
    """Teacher-forced, left to right: each span token given the token before it."""

    def run(items: list[SpanItem]) -> list[list[np.ndarray]]:
        return [_split(counts.sequence_logp(it.text, _scored(it)), it.spans) for it in items]

    return run


def span_metrics(per_item: list[list[np.ndarray]]) -> dict[str, float]:
    """Mean NLL over all span tokens, by position in the span, and over one-token blanks."""
    spans = [lp for item in per_item for lp in item]
    pick = {
        "span_nll": [lp for lp in spans],
        "first_nll": [lp[:1] for lp in spans],
        "middle_nll": [lp[1:-1] for lp in spans if len(lp) >= 3],
        "last_nll": [lp[-1:] for lp in spans if len(lp) >= 2],
        "one_token_nll": [lp for lp in spans if len(lp) == 1],
    }
    return {k: float(-np.concatenate(v).mean()) if v else float("nan") for k, v in pick.items()}


def span_probe(scorer: SpanScorer, items: list[SpanItem], corrupted: list[SpanItem]) -> dict[str, float]:
    """Span-infilling NLLs on `items`, and what corrupting every blank's neighbours costs the first token."""
    out = span_metrics(scorer(items))
    out["first_nll_corrupt"] = span_metrics(scorer(corrupted))["first_nll"]
    out["neighbour_cost"] = out["first_nll_corrupt"] - out["first_nll"]
    return out


# --- frequency-matched cloze --------------------------------------------------------------------


@dataclass
class ClozeItem:
    left: list[int]
    right: list[int]  # ends with the evidence: the answer again
    candidates: list[int]  # one-token words; four of them
    answer: int  # index of the right one in candidates


def word_token_ids(tok) -> np.ndarray:
    """Token ids that are a whole word after a space (" river"), three letters or more."""
    out = []
    for t in range(tok.vocab_size):
        text = tok.decode([t])
        if text.startswith(" ") and len(text) >= 4 and text[1:].isalpha():
            out.append(t)
    return np.array(out, dtype=np.int64)


def build_cloze_items(
    tokens: np.ndarray, unigram: CountModel, word_ids: np.ndarray, n: int = 200, context: int = 24, seed: int = PROBE_SEED
) -> list[ClozeItem]:
    """Blank a one-token word at a place where it recurs within `context` tokens to the right and not
    to the left. Distractors: the 4 words at ranks r-j .. r-j+3 of the training-count ranking, the
    answer at rank r and j drawn uniformly from 0..3 (none of them elsewhere in the passage), so a
    scorer that knows only the counts picks the answer one time in four."""
    tokens = np.asarray(tokens, dtype=np.int64)
    rng = np.random.default_rng(seed + 2)
    known = word_ids[unigram.counts[word_ids] > 0]
    ranked = known[np.lexsort((known, -unigram.counts[known]))]  # most frequent first; ties by id
    rank_of = {int(t): r for r, t in enumerate(ranked)}
    items: list[ClozeItem] = []
    for i in rng.permutation(np.arange(context, len(tokens) - context)):
        t = int(tokens[i])
        if t not in rank_of:
            continue
        left, ahead = tokens[i - context : i], tokens[i + 1 : i + 1 + context]
        again = np.flatnonzero(ahead == t)
        if not len(again) or t in left:
            continue
        right = ahead[: again[0] + 1]
        r, j = rank_of[t], int(rng.integers(4))
        if r - j < 0 or r - j + 4 > len(ranked):
            continue
        group = ranked[r - j : r - j + 4]
        passage = set(left.tolist()) | set(right.tolist())
        if any(int(c) != t and int(c) in passage for c in group):
            continue
        order = rng.permutation(4)
        cands = [int(c) for c in group[order]]
        items.append(ClozeItem(left.tolist(), right.tolist(), cands, cands.index(t)))
        if len(items) >= n:
            break
    return items


def cloze_scores(scorer: str, items: list[ClozeItem], ids: SpecialIds, seq_len: int = 0, model=None, counts: CountModel | None = None) -> np.ndarray:
    """(items, 4) scores. scorer: glm, mlm, clm (candidate + right context), clm-left (candidate
    only), or count (a count model over candidate + right context)."""
    if scorer == "count":
        rows = []
        for it in items:
            for c in it.candidates:
                x = np.array(it.left + [c] + it.right)
                rows.append(counts.sequence_logp(x, np.arange(len(x)) >= len(it.left)).sum())
        return np.array(rows).reshape(len(items), 4)
    samples = []
    for it in items:
        for c in it.candidates:
            x = np.array(it.left + [c] + it.right, dtype=np.int64)
            a = len(it.left)
            if scorer == "glm":
                samples.append(glm_infill_sample(with_cls(x, ids), [(a + 1, a + 2)], ids))
            elif scorer == "mlm":
                samples.append(mlm_sample(with_cls(x, ids), np.arange(len(x) + 1) == a + 1, ids))
            elif scorer == "clm":
                samples.append(clm_sample(x, np.arange(len(x)) >= a))
            else:
                samples.append(clm_sample(x, np.arange(len(x)) == a))
    return np.array([lp.sum() for lp in score(model, samples, seq_len, ids.pad)]).reshape(len(items), 4)


def cloze_accuracy(scores: np.ndarray, items: list[ClozeItem]) -> float:
    return float((scores.argmax(1) == np.array([it.answer for it in items])).mean()) if items else float("nan")


def cloze_probe(model, fam: str, items: list[ClozeItem], ids: SpecialIds, seq_len: int) -> dict[str, float]:
    """Accuracy among 4 frequency-matched candidates (chance and unigram level: 0.25)."""
    out = {"cloze_acc": cloze_accuracy(cloze_scores(fam, items, ids, seq_len, model), items)}
    if fam == "clm":
        out["cloze_acc_left"] = cloze_accuracy(cloze_scores("clm-left", items, ids, seq_len, model), items)
    return out


def baseline_probes(counts: CountModel, items: list[SpanItem], corrupted: list[SpanItem], cloze: list[ClozeItem], ids: SpecialIds) -> dict[str, float]:
    """Every probe for a count model: the numbers printed beside the models'."""
    out = span_probe(count_span_scorer(counts), items, corrupted)
    out["cloze_acc"] = cloze_accuracy(cloze_scores("count", cloze, ids, counts=counts), cloze)
    return out


# --- left-to-right -------------------------------------------------------------------------------


def perplexity_probe(model, fam: str, tokens: np.ndarray, ids: SpecialIds, seq_len: int, n: int = 64) -> dict:
    """exp(mean NLL) of the last 75% of each window given its first 25%."""
    if fam == "mlm":
        return {"ppl": float("nan")}
    length = seq_len - 2
    k = length // 4
    samples = []
    for x in windows(tokens, n, length):
        if fam == "glm":
            samples.append(gmask_sample(with_cls(x[:k], ids), x[k:], ids))
        else:
            scored = np.arange(len(x)) >= k
            samples.append(clm_sample(x, scored))
    logps = np.concatenate(score(model, samples, seq_len, ids.pad))
    return {"ppl": float(np.exp(-logps.mean()))}
