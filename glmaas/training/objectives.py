"""Training objectives on one backbone: GLM (multi-task blank infilling), causal LM, MLM.

As in THUDM/GLM only the data collator differs between objectives; the model is the same. Every
objective turns a window of raw tokens into a `Sample` of at most `seq_len` tokens, and `collate`
pads a batch to exactly `seq_len` so that all objectives cost the same compute per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from glmaas.model.glm_tokenizer import SpecialIds
from glmaas.training.blank_infilling import (
    Sample,
    document_infilling,
    sample_span_lengths,
    sentence_infilling,
    spans_in_documents,
    token_infilling,
)

# GLM token-level samples grow by 2 tokens per span (a mask in A, an [S] in B): about 1.1x at 15%
# masking with Poisson(3) spans; reading 88% of seq_len raw tokens (the [CLS] included) leaves headroom.
GLM_RAW_FRACTION = 0.88


def with_cls(tokens: np.ndarray, ids: SpecialIds) -> np.ndarray:
    """`[CLS]` + the window: THUDM/GLM's blank data always starts with it."""
    return np.concatenate([[ids.cls], np.asarray(tokens, dtype=np.int64)]).astype(np.int64)


@dataclass
class GLMObjective:
    """Multi-task blank infilling: one task drawn per sample with these probabilities."""

    ids: SpecialIds
    token_prob: float = 1.0  # `[MASK]`, Poisson(lam) spans
    sentence_prob: float = 0.0  # `[sMASK]`, whole sentences
    document_prob: float = 0.0  # `[gMASK]`, one blank of 50-100%: a suffix or a middle span
    shuffle: bool = True  # shuffle spans in Part B (ablation: --no-shuffle-block)
    mask_ratio: float = 0.15
    lam: float = 3.0
    doc_min_ratio: float = 0.5
    doc_suffix_prob: float = 0.5  # THUDM/GLM's --gpt-infill-prob: how often the document blank is a suffix
    sentence_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def raw_len(self, seq_len: int) -> int:
        return int(seq_len * GLM_RAW_FRACTION) - 1  # the [CLS] takes one slot

    def build(self, rng: np.random.Generator, tokens: np.ndarray) -> Sample:
        x = with_cls(tokens, self.ids)
        r = rng.random() * (self.token_prob + self.sentence_prob + self.document_prob)
        if r < self.token_prob:
            return token_infilling(rng, x, self.ids, self.mask_ratio, self.lam, self.shuffle)
        if r < self.token_prob + self.sentence_prob:
            return sentence_infilling(rng, x, self.ids, self.sentence_end, self.mask_ratio, self.shuffle)
        return document_infilling(rng, x, self.ids, self.doc_min_ratio, self.doc_suffix_prob)


@dataclass
class CausalLMObjective:
    """GPT: predict every next token; `sep = 0` makes the GLM mask purely causal."""

    ids: SpecialIds

    def raw_len(self, seq_len: int) -> int:
        return seq_len + 1

    def build(self, rng: np.random.Generator, tokens: np.ndarray) -> Sample:
        x = np.asarray(tokens, dtype=np.int64)
        n = len(x) - 1
        return Sample(x[:-1], x[1:], np.ones(n, np.int64), np.arange(n), np.zeros(n, np.int64), 0)


@dataclass
class SpanMaskedLMObjective:
    """THUDM/GLM's `--masked-lm` path: the same Poisson(lam) spans as GLM's token-level blanks
    (15%, inside documents, never the `[CLS]` or the last token), every span token replaced by
    `[MASK]` in place, full bidirectional attention (`sep` = length), loss on the masked tokens."""

    ids: SpecialIds
    mask_ratio: float = 0.15
    lam: float = 3.0

    def raw_len(self, seq_len: int) -> int:
        return seq_len - 1  # the [CLS] takes one slot

    def build(self, rng: np.random.Generator, tokens: np.ndarray) -> Sample:
        x = with_cls(tokens, self.ids)
        n = len(x)
        spans = spans_in_documents(rng, x, sample_span_lengths(rng, n, self.mask_ratio, self.lam), self.ids, self.mask_ratio)
        masked = np.zeros(n, np.int64)
        for s, e in spans:
            masked[s:e] = 1
        inp = np.where(masked == 1, self.ids.mask, x)
        return Sample(inp, x.copy(), masked, np.arange(n), np.zeros(n, np.int64), n)


@dataclass
class BertMaskedLMObjective:
    """BERT-style MLM: 15% single tokens, 80% `[MASK]` / 10% random / 10% kept, full bidirectional
    attention, loss on the chosen tokens. Not GLM's baseline; an extra arm (`mlm-bert`)."""

    ids: SpecialIds
    vocab_size: int
    mask_ratio: float = 0.15
    first_normal_id: int = 8  # random replacements are never special tokens

    def raw_len(self, seq_len: int) -> int:
        return seq_len

    def build(self, rng: np.random.Generator, tokens: np.ndarray) -> Sample:
        x = np.asarray(tokens, dtype=np.int64)
        n = len(x)
        k = max(1, int(round(self.mask_ratio * n)))
        chosen = rng.choice(n, size=k, replace=False)
        inp = x.copy()
        r = rng.random(k)
        inp[chosen[r < 0.8]] = self.ids.mask
        rand_pos = chosen[(r >= 0.8) & (r < 0.9)]
        inp[rand_pos] = rng.integers(self.first_normal_id, self.vocab_size, size=len(rand_pos))
        loss = np.zeros(n, np.int64)
        loss[chosen] = 1
        return Sample(inp, x.copy(), loss, np.arange(n), np.zeros(n, np.int64), n)


def make_objective(name: str, ids: SpecialIds, vocab_size: int, sentence_end=None):
    """Objectives by name: glm, glm-noshuffle, glm-token, glm-doc, glm-multitask, clm, mlm, mlm-bert.

    `glm` is the Token+Doc mixture (50% `[MASK]` spans, 50% `[gMASK]` document blanks) used by
    GLM-Doc and GLM-410M/515M; `glm-token` is token-level only (`--bert-prob 1.0`, GLM-Base/Large,
    the models the paper compares on infilling and NLU); `glm-multitask` adds sentence-level
    infilling with GLM-10B's 0.5 / 0.3 / 0.2 mix. `mlm` masks GLM's Poisson(3) spans in place
    (`--masked-lm`); `mlm-bert` is BERT's single-token 80/10/10 masking.
    """
    se = np.asarray(sentence_end if sentence_end is not None else [], dtype=np.int64)
    table = {
        "glm": lambda: GLMObjective(ids, token_prob=0.5, document_prob=0.5),
        "glm-noshuffle": lambda: GLMObjective(ids, token_prob=0.5, document_prob=0.5, shuffle=False),
        "glm-token": lambda: GLMObjective(ids),
        "glm-doc": lambda: GLMObjective(ids, token_prob=0.0, document_prob=1.0),
        "glm-multitask": lambda: GLMObjective(ids, 0.5, 0.3, 0.2, sentence_end=se),
        "clm": lambda: CausalLMObjective(ids),
        "mlm": lambda: SpanMaskedLMObjective(ids),
        "mlm-bert": lambda: BertMaskedLMObjective(ids, vocab_size),
    }
    if name not in table:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(table)}")
    return table[name]()


def fit(sample: Sample, seq_len: int) -> Sample:
    """Cut a sample that grew past seq_len (rare: many short spans); the tail of Part B goes."""
    if len(sample) <= seq_len:
        return sample
    s = slice(0, seq_len)
    return Sample(
        sample.tokens[s], sample.targets[s], sample.loss_mask[s], sample.position_ids[s],
        sample.block_position_ids[s], min(sample.sep, seq_len),
    )  # fmt: skip


def collate(samples: list[Sample], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pad to (B, seq_len) at the end. Padding after Part B is safe under the GLM mask: no real
    token attends to a later position unless it is in Part A, and the pads carry no loss."""
    B = len(samples)
    out = {
        "input_ids": np.full((B, seq_len), pad_id, np.int64),
        "targets": np.full((B, seq_len), pad_id, np.int64),
        "loss_mask": np.zeros((B, seq_len), np.int64),
        "position_ids": np.zeros((B, seq_len), np.int64),
        "block_position_ids": np.zeros((B, seq_len), np.int64),
        "sep": np.zeros(B, np.int64),
    }
    for i, s in enumerate(samples):
        s = fit(s, seq_len)
        n = len(s)
        out["input_ids"][i, :n] = s.tokens
        out["targets"][i, :n] = s.targets
        out["loss_mask"][i, :n] = s.loss_mask
        out["position_ids"][i, :n] = s.position_ids
        out["block_position_ids"][i, :n] = s.block_position_ids
        out["sep"][i] = s.sep
    return out
