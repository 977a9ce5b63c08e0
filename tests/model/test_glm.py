"""The GLM backbone: the mask's visibility rules, KV-cache decoding, presets, checkpoints."""

import numpy as np
import pytest
import torch

from glmaas.model.glm import GLM, GLMConfig, build_attention_mask
from glmaas.model.glm_tokenizer import SpecialIds

CFG = GLMConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, max_seq_len=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices run fastest on one thread, and leave the other core to the neighbours."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GLM(CFG).eval()


def run(model, tokens, sep, pos=None, blk=None):
    t = torch.tensor([tokens])
    pos = torch.arange(len(tokens))[None] if pos is None else torch.tensor([pos])
    blk = torch.zeros_like(pos) if blk is None else torch.tensor([blk])
    with torch.no_grad():
        return model(t, pos, blk, torch.tensor([sep]))[0][0]


def test_part_a_cannot_see_part_b(model):
    a = run(model, [10, 11, 12, 13, 14, 15], sep=4)
    b = run(model, [10, 11, 12, 13, 40, 41], sep=4)
    assert torch.allclose(a[:4], b[:4], atol=1e-6)
    assert not torch.allclose(a[4:], b[4:])


def test_part_a_is_bidirectional(model):
    a = run(model, [10, 11, 12, 13, 14, 15], sep=4)
    b = run(model, [10, 11, 12, 30, 14, 15], sep=4)  # change the last Part A token
    assert not torch.allclose(a[0], b[0])  # the first token sees it


def test_part_b_is_causal(model):
    a = run(model, [10, 11, 12, 13, 14, 15], sep=3)
    b = run(model, [10, 11, 12, 13, 14, 50], sep=3)
    assert torch.allclose(a[:5], b[:5], atol=1e-6)


def test_mask_is_causal_for_sep_zero_and_full_for_sep_length():
    m = build_attention_mask(torch.tensor([0, 5]), 5, 5)
    assert torch.equal(m[0, 0], torch.tril(torch.ones(5, 5, dtype=torch.bool)))
    assert m[1, 0].all()


def test_kv_cache_decoding_matches_a_full_forward(model):
    from glmaas.model.glm import KVCache

    tokens = [10, 11, 3, 12, 6, 20, 21, 22]
    pos = [0, 1, 2, 3, 2, 2, 2, 2]
    blk = [0, 0, 0, 0, 1, 2, 3, 4]
    full = run(model, tokens, sep=4, pos=pos, blk=blk)
    cache = KVCache(CFG, 1, CFG.max_seq_len)
    with torch.no_grad():
        pre, _ = model(torch.tensor([tokens[:4]]), torch.tensor([pos[:4]]), torch.tensor([blk[:4]]), torch.tensor([4]), kv_cache=cache)
        steps = [pre[0]]
        for i in range(4, len(tokens)):
            lg, _ = model(torch.tensor([[tokens[i]]]), torch.tensor([[pos[i]]]), torch.tensor([[blk[i]]]), torch.tensor([4]), kv_cache=cache)
            steps.append(lg[0])
    assert torch.allclose(torch.cat(steps), full, atol=1e-5)


def test_output_layer_is_tied_to_the_embedding(model):
    x = torch.randn(1, 1, CFG.n_embd)
    logits = torch.nn.functional.linear(model.transformer.ln_f(x), model.transformer.wte.weight)
    assert logits.shape[-1] == CFG.vocab_size
    assert not any(n.startswith("lm_head") for n, _ in model.named_parameters())


def test_presets_have_the_promised_sizes():
    tiny = GLM(GLMConfig.from_name("glm-tiny"))
    small = GLM(GLMConfig.from_name("glm-small"))
    assert 1_000_000 < tiny.num_params() < 5_000_000
    assert tiny.num_params() < small.num_params()
    with pytest.raises(ValueError):
        GLMConfig.from_name("glm-huge")


def test_masked_loss_counts_only_masked_positions(model):
    t = torch.tensor([[10, 11, 12, 13]])
    pos = torch.arange(4)[None]
    tgt = torch.tensor([[11, 12, 13, 14]])
    _, loss_all = model(t, pos, torch.zeros_like(pos), torch.tensor([0]), tgt, torch.ones(1, 4))
    _, loss_last = model(t, pos, torch.zeros_like(pos), torch.tensor([0]), tgt, torch.tensor([[0, 0, 0, 1]]))
    logits, _ = model(t, pos, torch.zeros_like(pos), torch.tensor([0]))
    expect = -torch.log_softmax(logits[0, 3], -1)[14]
    assert torch.allclose(loss_last, expect, atol=1e-5)
    assert not torch.allclose(loss_all, loss_last)


def test_checkpoint_round_trip_gives_the_same_logits(model, tmp_path):
    from glmaas.model.glm_checkpoint import load_checkpoint, save_checkpoint
    from glmaas.model.glm_tokenizer import train_tokenizer

    tok = train_tokenizer(["hello world. " * 50], vocab_size=300)
    save_checkpoint(tmp_path, model, tok, extra={"step": 7})
    loaded, tok2, cfg = load_checkpoint(tmp_path)
    assert cfg["step"] == 7 and tok2.special == tok.special
    assert torch.allclose(run(model, [1, 2, 3], 2), run(loaded, [1, 2, 3], 2))
    assert loaded.transformer.wte.weight.data_ptr() == loaded.state_dict()["transformer.wte.weight"].data_ptr()


def test_fill_blanks_is_reproducible_with_a_seed_and_stops_at_the_limit(model):
    from glmaas.model.glm_generate import SamplingParams, fill_blanks

    ids = SpecialIds()
    params = SamplingParams(max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3)
    a = fill_blanks(model, [10, ids.mask, 11, ids.mask, 12], ids, params)
    b = fill_blanks(model, [10, ids.mask, 11, ids.mask, 12], ids, params)
    assert a == b and len(a) == 2 and all(len(p) <= 5 for p in a)
    greedy = fill_blanks(model, [10, 11, ids.gmask], ids, SamplingParams(max_new_tokens=4, temperature=0))
    assert len(greedy) == 1 and all(t not in (ids.eop, ids.eod) for t in greedy[0])


def test_top_p_keeps_the_smallest_nucleus():
    from glmaas.model.glm_generate import logits_to_probs

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = logits_to_probs(logits, temperature=1.0, top_p=0.7)
    assert probs[2] == 0 and probs[3] == 0
    assert np.isclose(probs[0].item(), 0.5 / 0.8) and np.isclose(probs.sum().item(), 1.0)


def test_tokenizer_keeps_special_tokens_whole():
    from glmaas.model.glm_tokenizer import train_tokenizer

    tok = train_tokenizer(["The cat sat on the mat. " * 40], vocab_size=300)
    ids = tok.special
    assert tok.encode("The[MASK] sat")[1] == ids.mask
    assert tok.decode(tok.encode("The cat sat on the mat.")) == "The cat sat on the mat."
    assert tok.encode("[gMASK]") == [ids.gmask] and tok.encode("<|startofpiece|>") == [ids.sop]


def test_slot_cache_decodes_rows_of_different_lengths_as_each_alone(model):
    """Two Part A's of different lengths prefilled into two slots, then one Part B token each in
    one pass: each row's logits are those of its sequence decoded alone."""
    from glmaas.model.glm import KVCache, SlotKVCache

    parts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    cache = SlotKVCache(CFG, slots=2, max_len=CFG.max_seq_len)
    with torch.no_grad():
        for slot, part in enumerate(parts):
            cache.start = slot
            pos = torch.arange(len(part))[None]
            model(torch.tensor([part]), pos, torch.zeros_like(pos), torch.tensor([len(part)]), kv_cache=cache)
        cache.start = 0
        both, _ = model(torch.tensor([[6], [6]]), torch.tensor([[1], [3]]), torch.tensor([[1], [1]]),
                        torch.tensor([4, 6]), kv_cache=cache)
        for row, (part, blank) in enumerate(zip(parts, (1, 3))):
            alone = KVCache(CFG, 1, CFG.max_seq_len)
            pos = torch.arange(len(part))[None]
            model(torch.tensor([part]), pos, torch.zeros_like(pos), torch.tensor([len(part)]), kv_cache=alone)
            one, _ = model(torch.tensor([[6]]), torch.tensor([[blank]]), torch.tensor([[1]]),
                           torch.tensor([len(part)]), kv_cache=alone)
            assert torch.allclose(both[row, -1], one[0, -1], atol=1e-5)
    assert cache.lengths == [5, 7]
