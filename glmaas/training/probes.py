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
- Frequency-matched cloze: a word whose evidence (the same word again) follows the blank; the three
  distractors have its token count and are its neighbours in the unigram model's ranking, with the
  answer at a uniformly drawn place among them, so a unigram scorer is at chance (25%). GLM scores the
  candidate as a blank, MLM as a `[MASK]`, CLM as log p(candidate + right context | left) (and,
  for comparison, log p(candidate | left)).

Every model probe builds `Sample`s whose loss_mask marks the scored tokens; `score` returns their
log-probabilities.
"""

from __future__ import annotations

import re
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
    normal = vocab_size - FIRST_NORMAL_ID
    out = []
    for it in items:
        x = it.text.copy()
        for s, e in it.spans:
            for j in (s - 1, e):
                if 0 < j < len(x):  # a shift by 1..normal-1 inside the normal ids: never the same token
                    x[j] = FIRST_NORMAL_ID + (x[j] - FIRST_NORMAL_ID + rng.integers(1, normal)) % normal
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
        "span_nll": spans,
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
    candidates: list[list[int]]  # four words, each with the answer's token count
    answer: int  # index of the right one in candidates


_WORD = re.compile(r"(?<![\w@<])([A-Za-z]{3,})(?![\w>])")


def build_cloze_items(
    text: str, tok, unigram: CountModel, n: int = 200, context: int = 24, reach: int = 200, seed: int = PROBE_SEED
) -> list[ClozeItem]:
    """Blank a word at a place where it occurs again within `reach` characters to the right and not
    within `reach` to the left. The words of the text with the answer's token count are ranked by
    the unigram model's log-probability; the answer has rank r, and the candidates are ranks
    r-j .. r-j+3 with j uniform in 0..3. An item is kept only if none of ranks r-3 .. r+3 other
    than the answer occurs in its passage, which does not depend on j: so a unigram scorer picks the
    answer exactly when j = 0, one time in four."""
    rng = np.random.default_rng(seed + 2)
    matches = list(_WORD.finditer(text))
    encoded = {w: tuple(tok.encode(" " + w)) for w in sorted({m.group(1) for m in matches})}
    groups: dict[int, list[str]] = {}
    for w, t in encoded.items():
        if 1 <= len(t) <= 3:
            groups.setdefault(len(t), []).append(w)
    rank: dict[str, tuple[int, int]] = {}
    for k, ws in groups.items():
        ws.sort(key=lambda w: (-float(unigram.unigram_logp[list(encoded[w])].sum()), w))
        rank.update({w: (k, r) for r, w in enumerate(ws)})
    items: list[ClozeItem] = []
    for i in rng.permutation(len(matches)):
        m = matches[i]
        w = m.group(1)
        if w not in rank or text.find(" " + w, max(0, m.start() - reach), m.start()) >= 0:
            continue
        nxt = _WORD.search(text, m.end(), m.end() + reach)
        while nxt and nxt.group(1) != w:
            nxt = _WORD.search(text, nxt.end(), m.end() + reach)
        if nxt is None or text[m.start() - 1 : m.start()] != " ":
            continue
        k, r = rank[w]
        ws = groups[k]
        if r < 3 or r + 3 >= len(ws):
            continue
        passage = text[max(0, m.start() - reach) : nxt.end()]
        present = set(_WORD.findall(passage))
        if any(ws[q] in present for q in range(r - 3, r + 4) if q != r):
            continue
        j = int(rng.integers(4))
        order = rng.permutation(4)
        cands = [list(encoded[ws[r - j + q]]) for q in order]
        left = tok.encode(text[: m.start() - 1][-8 * context :])[-context:]
        right = tok.encode(text[m.end() : nxt.end()])
        if not left or len(right) > context:
            continue
        items.append(ClozeItem(left, right, cands, int(np.flatnonzero(order == j)[0])))
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
                x = np.array(it.left + c + it.right)
                rows.append(counts.sequence_logp(x, np.arange(len(x)) >= len(it.left)).sum())
        return np.array(rows).reshape(len(items), 4)
    samples = []
    for it in items:
        for c in it.candidates:
            x = np.array(it.left + c + it.right, dtype=np.int64)
            a, b = len(it.left), len(it.left) + len(c)
            if scorer == "glm":
                samples.append(glm_infill_sample(with_cls(x, ids), [(a + 1, b + 1)], ids))
            elif scorer == "mlm":
                pos = np.arange(len(x) + 1)
                samples.append(mlm_sample(with_cls(x, ids), (pos > a) & (pos <= b), ids))
            elif scorer == "clm":
                samples.append(clm_sample(x, np.arange(len(x)) >= a))
            else:
                samples.append(clm_sample(x, (np.arange(len(x)) >= a) & (np.arange(len(x)) < b)))
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
