"""The objectives against THUDM/GLM's data path (`blocklm_utils.py`, `config/*.sh`, `arguments.py`
at the repository's main branch): each test names the reference lines it checks."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glmaas.model.glm_tokenizer import SpecialIds
from glmaas.training.blank_infilling import document_infilling, document_ranges, spans_in_documents, token_infilling
from glmaas.training.experiment import ARMS
from glmaas.training.objectives import make_objective
from glmaas.training.train import TrainConfig, build_model

IDS = SpecialIds()
WINDOW = np.arange(100, 155)  # 55 distinct "words"
docs = st.lists(st.lists(st.integers(100, 999), min_size=1, max_size=60), min_size=1, max_size=4)


def with_documents(parts: list[list[int]]) -> np.ndarray:
    """`[CLS] doc <eod> doc <eod> ... doc`, as a pretraining sample that spans documents."""
    out = [IDS.cls]
    for i, p in enumerate(parts):
        out += p + ([IDS.eod] if i < len(parts) - 1 else [])
    return np.array(out)


def test_glm_token_is_token_level_only_and_an_arm_of_the_experiment():
    """config/ds_block_base.sh:9 and config/ds_block_large.sh:9 train GLM-Base/Large with
    `--bert-prob 1.0`; blocklm_utils.py:328-329 then always takes the 'bert' (`[MASK]` span) branch."""
    obj = make_objective("glm-token", IDS, 1000)
    for i in range(100):
        s = obj.build(np.random.default_rng(i), WINDOW)
        assert IDS.gmask not in s.tokens and (s.tokens[: s.sep] == IDS.mask).any()
    assert "glm-token" in ARMS and "glm" not in ARMS and "mlm" in ARMS and "clm" in ARMS


def test_every_blank_sample_starts_with_cls():
    """blocklm_utils.py:273 asserts `tokens[0] == ENC` ([CLS]) before making blank data; MLM goes
    through the same generate_blank_data (blocklm_utils.py:270-281)."""
    for name in ("glm-token", "glm", "mlm"):
        obj = make_objective(name, IDS, 1000)
        for i in range(20):
            s = obj.build(np.random.default_rng(i), WINDOW)
            assert s.tokens[0] == IDS.cls and s.loss_mask[0] == 0 and s.position_ids[0] == 0


@settings(max_examples=150, deadline=None)
@given(parts=docs, seed=st.integers(0, 2**32 - 1))
def test_blanks_stay_inside_documents_and_never_take_cls_or_the_last_token(parts, seed):
    """blocklm_utils.py:116-131: documents are cut at the eod token, a leading ENC is skipped and
    the last document loses its last token (`length -= 1`); 133-157 place spans per document with
    `sample_spans` (103-114), so no blank crosses a document boundary."""
    x = with_documents(parts)
    ranges = document_ranges(x, IDS)
    allowed = set()
    for off, length in ranges:
        allowed.update(range(off, off + length))
    assert 0 not in allowed and len(x) - 1 not in allowed
    assert not any(x[i] == IDS.eod for i in allowed)
    rng = np.random.default_rng(seed)
    spans = spans_in_documents(rng, x, [1, 2, 3, 4, 5], IDS)
    for s, e in spans:
        assert set(range(s, e)) <= allowed
        assert all(off <= s and e <= off + length for off, length in ranges if off <= s < off + length)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    s = token_infilling(np.random.default_rng(seed), x, IDS)
    assert s.tokens[0] == IDS.cls
    part_a = s.tokens[: s.sep].tolist()
    assert part_a[-1] == x[-1]  # the last token is never in a blank
    assert part_a.count(IDS.eod) == x.tolist().count(IDS.eod)  # nor is a document boundary


def test_one_document_blank_is_a_suffix_or_one_middle_span_half_the_time():
    """blocklm_utils.py:403-406: the blank has randint(int(gpt_min_ratio * n), n - 2) tokens;
    410-432: with probability `--gpt-infill-prob` (arguments.py:201, default 0.5) it is a suffix
    (`[gMASK] [S]` + text, no `[E]`), otherwise 434-436 make one `generation` blank of that length:
    `[gMASK]` in Part A (216-217), `[S] span [E]` in Part B (193-201), placed like a token blank."""
    x = np.concatenate([[IDS.cls], WINDOW])
    n = len(x)
    shapes = {"suffix": 0, "middle": 0}
    for i in range(400):
        s = document_infilling(np.random.default_rng(i), x, IDS)
        part_a = s.tokens[: s.sep].tolist()
        assert part_a.count(IDS.gmask) == 1 and IDS.mask not in part_a and part_a[0] == IDS.cls
        if s.targets[-1] == IDS.eop:
            shapes["middle"] += 1
            g = int(s.loss_mask.sum()) - 1
            assert part_a[-1] == x[-1] and part_a[-1] != IDS.gmask  # a blank in the middle
            assert s.targets[s.sep : -1].tolist() == x[part_a.index(IDS.gmask) : part_a.index(IDS.gmask) + g].tolist()
        else:
            shapes["suffix"] += 1
            g = int(s.loss_mask.sum())
            assert part_a[-1] == IDS.gmask and s.targets[s.sep :].tolist() == x[n - g :].tolist()
        assert int(0.5 * n) <= g <= n - 2
    assert 150 < shapes["middle"] < 250 and 150 < shapes["suffix"] < 250


def test_a_multi_document_sample_always_gets_a_suffix_blank():
    """blocklm_utils.py:408-410: `multiple_doc` (an eos that is not the last token) forces the
    suffix branch."""
    x = with_documents([list(range(100, 130)), list(range(200, 230))])
    for i in range(100):
        s = document_infilling(np.random.default_rng(i), x, IDS)
        assert s.tokens[s.sep - 1] == IDS.gmask and s.targets[-1] != IDS.eop


def test_span_mlm_masks_the_same_poisson_spans_all_with_mask():
    """blocklm_utils.py:342-343 (`sep = len(text)`: full attention), 277-278 (`--masked-lm` takes
    the same block spans as GLM) and 160-170 (`make_masked_data`: every span token becomes [MASK],
    positions 0..n-1, loss on the span tokens only); 337-341 draw Poisson lengths until
    int(0.15 * n) tokens are covered."""
    obj = make_objective("mlm", IDS, 1000)
    runs_of_masks = []
    for i in range(200):
        s = obj.build(np.random.default_rng(i), WINDOW)
        n = len(s)
        masked = s.tokens == IDS.mask
        assert s.sep == n and s.position_ids.tolist() == list(range(n)) and not s.block_position_ids.any()
        assert (s.loss_mask.astype(bool) == masked).all() and (s.targets == np.concatenate([[IDS.cls], WINDOW])).all()
        assert not masked[0] and not masked[-1]
        assert masked.sum() >= int(0.15 * n) - 5  # a span that does not fit is dropped, rarely
        edges = np.flatnonzero(np.diff(np.concatenate([[0], masked.astype(int), [0]])))
        runs_of_masks += list(edges[1::2] - edges[::2])
    assert np.mean(runs_of_masks) > 2.0  # spans, not single tokens (Poisson(3) truncated to >= 1)


def test_bert_style_mlm_stays_as_an_extra_arm():
    s = make_objective("mlm-bert", IDS, 1000).build(np.random.default_rng(0), np.arange(100, 200))
    assert s.loss_mask.sum() == 15 and s.sep == 100


def test_dropout_is_0_1_as_in_the_reference():
    """arguments.py:39-40 (`--attention-dropout`, default 0.1) and 52-53 (`--hidden-dropout`,
    default 0.1); the model applies it to attention, residual and embedding outputs."""
    cfg = TrainConfig(data=[], out_dir="")
    assert cfg.dropout == 0.1
    model = build_model(cfg, 300).train()
    assert model.config.dropout == 0.1
    ids = torch.arange(8, 40)[None]
    pos = torch.arange(32)[None]
    args = (ids, pos, torch.zeros_like(pos), torch.tensor([32]))
    assert not torch.equal(model(*args)[0], model(*args)[0])
    model.eval()
    assert torch.equal(model(*args)[0], model(*args)[0])
