"""Objectives, batching and the schedule: the pure pieces the training loop is made of."""

import numpy as np
import pytest

from glmaas.model.glm_tokenizer import SpecialIds
from glmaas.training.data import get_batch, sample_rng
from glmaas.training.objectives import collate, make_objective
from glmaas.training.train import get_lr, sample_indices

IDS = SpecialIds()
TEXT = np.arange(100, 229)  # 129 distinct "words"


class ArrayShards:
    def __init__(self, tokens):
        self.tokens = np.asarray(tokens)

    def window(self, rng, n):
        start = int(rng.integers(0, len(self.tokens) - n + 1))
        return self.tokens[start : start + n]


def test_causal_lm_predicts_the_next_token_with_a_causal_mask():
    s = make_objective("clm", IDS, 1000).build(np.random.default_rng(0), TEXT[:9])
    assert s.tokens.tolist() == TEXT[:8].tolist() and s.targets.tolist() == TEXT[1:9].tolist()
    assert s.sep == 0 and s.loss_mask.all()


def test_bert_mlm_masks_15_percent_and_sees_everything():
    s = make_objective("mlm-bert", IDS, 1000).build(np.random.default_rng(0), TEXT[:100])
    assert s.loss_mask.sum() == 15 and s.sep == 100
    assert (s.targets == TEXT[:100]).all()
    changed = s.tokens != s.targets
    assert not changed[s.loss_mask == 0].any()  # only chosen tokens are corrupted
    assert (s.tokens == IDS.mask).sum() >= 8  # ~80% of the 15 become [MASK]


def test_glm_mixture_draws_both_tasks_and_fits_the_sequence():
    obj = make_objective("glm", IDS, 1000)
    samples = [obj.build(np.random.default_rng(i), TEXT[: obj.raw_len(128)]) for i in range(200)]
    n_doc = sum(IDS.gmask in s.tokens for s in samples)
    n_tok = sum(IDS.mask in s.tokens for s in samples)
    assert n_doc + n_tok == 200 and 60 < n_doc < 140
    assert max(len(s) for s in samples) <= 128


def test_noshuffle_keeps_part_b_in_text_order():
    obj = make_objective("glm-noshuffle", IDS, 1000)
    obj.document_prob = 0.0
    for i in range(30):
        s = obj.build(np.random.default_rng(i), TEXT[:110])
        starts = np.flatnonzero(s.tokens == IDS.sop)
        assert s.position_ids[starts].tolist() == sorted(s.position_ids[starts].tolist())


def test_collate_pads_every_objective_to_the_same_length():
    rng = np.random.default_rng(0)
    for name in ("glm", "glm-token", "glm-multitask", "clm", "mlm", "mlm-bert"):
        obj = make_objective(name, IDS, 1000, sentence_end=[100, 150])
        batch = collate([obj.build(rng, TEXT[: obj.raw_len(64)]) for _ in range(3)], 64, IDS.pad)
        assert batch["input_ids"].shape == (3, 64) and batch["sep"].shape == (3,)
        assert batch["loss_mask"].sum() > 0


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError):
        make_objective("t5", IDS, 1000)


def test_a_batch_depends_only_on_seed_step_and_sample_index():
    shards, obj = ArrayShards(np.arange(100, 2000)), make_objective("glm", IDS, 3000)
    whole = get_batch(shards, obj, 64, seed=1, step=5, indices=range(0, 4), pad_id=0)
    halves = [get_batch(shards, obj, 64, 1, 5, range(a, a + 2), 0) for a in (0, 2)]
    for key in whole:
        assert (whole[key] == np.concatenate([h[key] for h in halves])).all()
    other = get_batch(shards, obj, 64, seed=1, step=6, indices=range(0, 4), pad_id=0)
    assert not (other["input_ids"] == whole["input_ids"]).all()
    assert sample_rng(1, 5, 0).random() == sample_rng(1, 5, 0).random()


def test_two_processes_cover_what_one_process_accumulates():
    one = [list(sample_indices(0, m, grad_accum=2, batch_size=3)) for m in range(2)]
    two = [list(sample_indices(r, 0, grad_accum=1, batch_size=3)) for r in range(2)]
    assert one == two == [[0, 1, 2], [3, 4, 5]]


def test_lr_warms_up_then_decays_by_cosine_to_the_floor():
    lrs = [get_lr(i, lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1) for i in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:110]))
    assert lrs[60] == pytest.approx(0.55) and lrs[115] == pytest.approx(0.1)
