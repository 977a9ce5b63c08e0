"""The blank-infilling data path: glm.md §1.6 exactly, then invariants on random texts and spans."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from glmaas.model.glm import build_attention_mask
from glmaas.model.glm_tokenizer import SpecialIds
from glmaas.training.blank_infilling import (
    document_infilling,
    gmask_sample,
    make_block_data,
    place_spans,
    sample_span_lengths,
    sentence_infilling,
    token_infilling,
)

IDS = SpecialIds()
# Text tokens get ids >= 100 so they never collide with the special ids.
CLS, X1, X2, X3, X4, X5, X6 = IDS.cls, 101, 102, 103, 104, 105, 106
M, S, E, G = IDS.mask, IDS.sop, IDS.eop, IDS.gmask


def test_worked_example_of_section_1_6():
    tokens = [CLS, X1, X2, X3, X4, X5, X6]
    s = make_block_data(np.array(tokens), spans=[(3, 4), (5, 7)], order=[(5, 7), (3, 4)], ids=IDS)
    assert s.tokens.tolist() == [CLS, X1, X2, M, X4, M, S, X5, X6, S, X3]
    assert s.targets.tolist() == [CLS, X1, X2, M, X4, M, X5, X6, E, X3, E]
    assert s.loss_mask.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert s.position_ids.tolist() == [0, 1, 2, 3, 4, 5, 5, 5, 5, 3, 3]
    assert s.block_position_ids.tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
    assert s.sep == 6
    mask = build_attention_mask(torch.tensor([s.sep]), len(s), len(s))[0, 0].int()
    expected = [
        "11111100000", "11111100000", "11111100000", "11111100000", "11111100000", "11111100000",
        "11111110000", "11111111000", "11111111100", "11111111110", "11111111111",
    ]  # fmt: skip
    assert ["".join(str(v) for v in row.tolist()) for row in mask] == expected


def test_worked_gmask_example_of_section_1_6():
    s = gmask_sample(np.array([CLS, X1, X2, X3]), np.array([X4, X5, X6]), IDS)
    assert s.tokens.tolist() == [CLS, X1, X2, X3, G, S, X4, X5]
    assert s.targets.tolist() == [CLS, X1, X2, X3, G, X4, X5, X6]
    assert s.loss_mask.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert s.position_ids.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert s.block_position_ids.tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert s.sep == 5


def reconstruct(sample, n_text: int) -> list[int]:
    """Undo the corruption: put each Part B piece back into its blank (by position id)."""
    sep = sample.sep
    part_a = sample.tokens[:sep].tolist()
    pieces, cur_pos, cur = {}, None, []
    for i in range(sep, len(sample)):
        if sample.block_position_ids[i] == 1:
            cur_pos, cur = int(sample.position_ids[i]), []
            pieces[cur_pos] = cur
        if sample.targets[i] not in (IDS.eop,):
            cur.append(int(sample.targets[i]))
    out = []
    for j, t in enumerate(part_a):
        out.extend(pieces[int(sample.position_ids[j])] if t in (IDS.mask, IDS.smask) else [t])
    return out


texts = st.lists(st.integers(100, 999), min_size=2, max_size=200).map(np.array)


@settings(max_examples=150, deadline=None)
@given(text=texts, seed=st.integers(0, 2**32 - 1), shuffle=st.booleans())
def test_token_infilling_invariants(text, seed, shuffle):
    rng = np.random.default_rng(seed)
    s = token_infilling(rng, text, IDS, shuffle=shuffle)
    n, sep = len(text), s.sep
    k = int((s.tokens[:sep] == IDS.mask).sum())
    masked = int(s.loss_mask.sum()) - k
    assert len(s) == n + 2 * k  # one mask in A and one [S] in B per span
    assert sep == n - masked + k
    assert s.loss_mask[:sep].sum() == 0 and s.loss_mask[sep:].all()
    assert (s.block_position_ids[:sep] == 0).all()
    assert (s.targets[:sep] == s.tokens[:sep]).all()
    assert s.position_ids[:sep].tolist() == list(range(sep))  # positions in the corrupted text
    assert (s.targets == IDS.eop).sum() == k and (s.tokens == IDS.sop).sum() == k
    # inside a piece the input is the target shifted by one; each piece sits at its mask's position
    starts = np.flatnonzero(s.tokens == IDS.sop)
    for a, b in zip(starts, list(starts[1:]) + [len(s)]):
        assert s.tokens[a + 1 : b].tolist() == s.targets[a : b - 1].tolist()
        assert s.block_position_ids[a:b].tolist() == list(range(1, b - a + 1))
        assert len(set(s.position_ids[a:b].tolist())) == 1 and s.tokens[s.position_ids[a]] == IDS.mask
    assert reconstruct(s, n) == text.tolist()
    if not shuffle:  # Part B follows the text order
        assert s.position_ids[starts].tolist() == sorted(s.position_ids[starts].tolist())


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 500), seed=st.integers(0, 2**32 - 1))
def test_spans_cover_15_percent_and_never_touch(n, seed):
    rng = np.random.default_rng(seed)
    lengths = sample_span_lengths(rng, n)
    assert sum(lengths) >= int(0.15 * n) and all(1 <= k <= 39 for k in lengths)
    spans = place_spans(rng, n, lengths)
    assert all(0 <= s < e <= n for s, e in spans)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))  # at least one gap token
    if n >= 20:  # long enough that the drawn lengths always fit
        assert sum(e - s for s, e in spans) >= int(0.15 * n)


@settings(max_examples=100, deadline=None)
@given(text=texts, seed=st.integers(0, 2**32 - 1))
def test_document_infilling_suffix_branch_generates_a_50_to_100_percent_suffix(text, seed):
    s = document_infilling(np.random.default_rng(seed), text, IDS, suffix_prob=1.0)
    g = int(s.loss_mask.sum())
    assert g == 1 if len(text) < 3 else int(0.5 * len(text)) <= g <= len(text) - 2
    assert s.targets[s.sep :].tolist() == text[-g:].tolist()
    assert s.tokens[s.sep - 1] == IDS.gmask and s.tokens[s.sep] == IDS.sop
    assert len(s) == len(text) + 1


@settings(max_examples=100, deadline=None)
@given(text=texts, seed=st.integers(0, 2**32 - 1))
def test_sentence_infilling_masks_whole_sentences(text, seed):
    ends = np.array([100, 101, 102])  # pretend these ids are '.', '?', '!'
    s = sentence_infilling(np.random.default_rng(seed), text, IDS, ends)
    assert reconstruct(s, len(text)) == text.tolist()
    starts = np.flatnonzero(s.tokens == IDS.sop)
    for a, b in zip(starts, list(starts[1:]) + [len(s)]):
        piece = s.targets[a : b - 1]
        # a piece is a sentence: only its last token may end a sentence (or it runs to the text's end)
        assert not np.isin(piece[:-1], ends).any()
