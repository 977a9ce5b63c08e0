"""Probes that compare objectives on one backbone (glm.md §2.3): each model is scored the way its
objective lets it see the text.

- Blank infilling: held-out Poisson(3) spans covering 15%. GLM fills them as Part B (sees both
  sides); CLM scores the span from the left context only; MLM gets one `[MASK]` per span token (it
  is given the oracle span length, which GLM is not).
- Left-to-right perplexity of the last 75% of a window given the first 25%: CLM directly, GLM as
  `prefix [gMASK]` generation. MLM has no left-to-right factorisation and is not scored.
- Cloze whose evidence follows the blank: a word that occurs twice in a passage is blanked at
  its first occurrence; 4 candidates with the same token count. GLM scores log p(candidate) by
  infilling, MLM sums independent log-probs of `[MASK]`s, CLM scores log p(candidate + rest).

Every probe builds `Sample`s whose loss_mask marks the scored tokens; `score` returns their
log-probabilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from glmaas.model.glm_tokenizer import SpecialIds
from glmaas.training.blank_infilling import Sample, gmask_sample, make_block_data, place_spans, sample_span_lengths
from glmaas.training.evaluate import forward_batch, to_tensors
from glmaas.training.objectives import collate

PROBE_SEED = 20220522


def family(objective: str) -> str:
    """Which scoring a model gets: 'glm', 'clm' or 'mlm'."""
    return objective if objective in ("clm", "mlm") else "glm"


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


def windows(tokens: np.ndarray, n: int, length: int) -> list[np.ndarray]:
    rng = np.random.default_rng(PROBE_SEED)
    starts = rng.integers(0, len(tokens) - length, size=n)
    return [np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts]


def infilling_probe(model, fam: str, tokens: np.ndarray, ids: SpecialIds, seq_len: int, n: int = 64) -> dict:
    """Per-token NLL and teacher-forced accuracy on held-out spans (same spans for every model)."""
    rng = np.random.default_rng(PROBE_SEED + 1)
    samples, n_tok = [], 0
    for x in windows(tokens, n, int(seq_len * 0.8)):
        spans = place_spans(rng, len(x), sample_span_lengths(rng, len(x)))
        scored = np.zeros(len(x), bool)
        for s, e in spans:
            scored[s:e] = True
        n_tok += scored.sum()
        if fam == "glm":
            samples.append(glm_infill_sample(x, spans, ids))
        elif fam == "mlm":
            samples.append(mlm_sample(x, scored, ids))
        else:
            scored[0] = False  # nothing predicts the first token; spans start at >= 0, rarely 0
            samples.append(clm_sample(x, scored))
    logps = np.concatenate(score(model, samples, seq_len, ids.pad))
    acc = _teacher_forced_accuracy(model, samples, seq_len, ids.pad)
    return {"infill_nll": float(-logps.mean()), "infill_acc": acc}


@torch.no_grad()
def _teacher_forced_accuracy(model, samples: list[Sample], seq_len: int, pad_id: int) -> float:
    correct = total = 0
    for i in range(0, len(samples), 64):
        batch = to_tensors(collate(samples[i : i + 64], seq_len, pad_id))
        logits, _ = forward_batch(model, batch)
        m = batch["loss_mask"].bool()
        correct += (logits.argmax(-1) == batch["targets"])[m].sum().item()
        total += m.sum().item()
    return correct / max(total, 1)


def perplexity_probe(model, fam: str, tokens: np.ndarray, ids: SpecialIds, seq_len: int, n: int = 64) -> dict:
    """exp(mean NLL) of the last 75% of each window given its first 25%."""
    if fam == "mlm":
        return {"ppl": float("nan")}
    length = seq_len - 2
    k = length // 4
    samples = []
    for x in windows(tokens, n, length):
        if fam == "glm":
            samples.append(gmask_sample(x[:k], x[k:], ids))
        else:
            scored = np.arange(len(x)) >= k
            samples.append(clm_sample(x, scored))
    logps = np.concatenate(score(model, samples, seq_len, ids.pad))
    return {"ppl": float(np.exp(-logps.mean()))}


@dataclass
class ClozeItem:
    left: list[int]
    right: list[int]  # holds the evidence: the same word again
    candidates: list[list[int]]  # candidates[0] is the answer


_WORD = re.compile(r"(?<![\w@<])([A-Za-z]{4,})(?![\w>])")


def build_cloze_items(text: str, tok, n: int = 200, context: int = 40) -> list[ClozeItem]:
    """Passages where a word recurs: blank its first occurrence, keep the second in the right context.

    Distractors are other words of the text with the answer's token count, absent from the passage.
    """
    rng = np.random.default_rng(PROBE_SEED + 2)
    words = _WORD.findall(text)
    by_len: dict[int, list[str]] = {}
    for w in sorted(set(words)):
        by_len.setdefault(len(tok.encode(" " + w)), []).append(w)
    paragraphs = [p for p in re.split(r"\n\s*\n|\n(?= = )", text) if len(p) > 200]
    items: list[ClozeItem] = []
    for pi in rng.permutation(len(paragraphs)):
        para = paragraphs[pi]
        seen: dict[str, int] = {}
        for m in _WORD.finditer(para):
            w = m.group(1)
            if w in seen and m.start() - seen[w] < 240:
                first = seen[w]
                left = tok.encode(para[:first].rstrip(" "))[-context:]
                right = tok.encode(para[first + len(w) : m.end()])
                answer = tok.encode(" " + w)
                pool = [d for d in by_len.get(len(answer), []) if d != w and d not in para]
                if 1 <= len(answer) <= 3 and len(pool) >= 3 and left and len(right) <= 2 * context:
                    distract = [tok.encode(" " + pool[j]) for j in rng.choice(len(pool), 3, replace=False)]
                    items.append(ClozeItem(left, right, [answer] + distract))
                break
            seen.setdefault(w, m.start())
        if len(items) >= n:
            break
    return items


def cloze_probe(model, fam: str, items: list[ClozeItem], ids: SpecialIds, seq_len: int) -> dict:
    """Accuracy of picking the answer among 4 same-length candidates (chance 25%)."""
    samples = []
    for it in items:
        for cand in it.candidates:
            x = np.array(it.left + cand + it.right, dtype=np.int64)
            a, b = len(it.left), len(it.left) + len(cand)
            if fam == "glm":
                samples.append(glm_infill_sample(x, [(a, b)], ids))
            elif fam == "mlm":
                masked = np.zeros(len(x), bool)
                masked[a:b] = True
                samples.append(mlm_sample(x, masked, ids))
            else:
                samples.append(clm_sample(x, np.arange(len(x)) >= a))
    totals = np.array([lp.sum() for lp in score(model, samples, seq_len, ids.pad)]).reshape(len(items), 4)
    return {"cloze_acc": float((totals.argmax(1) == 0).mean())}
