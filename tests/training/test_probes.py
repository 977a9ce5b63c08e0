"""The experiment's probes and report, on a random tiny model (what is measured, not how well)."""

import math

import numpy as np
import pytest
import torch

from glmaas.model.glm import GLM, GLMConfig
from glmaas.model.glm_tokenizer import train_tokenizer
from glmaas.training.probes import build_cloze_items, cloze_probe, family, infilling_probe, perplexity_probe
from glmaas.training.report import summarize, write_report

PLACES = ["Alder", "Brook", "Cedar", "Dunmore", "Elwood", "Fairholm", "Glen", "Harrow", "Ivel", "Jarrow"]
GOODS = ["grain", "wool", "timber", "salt", "cider", "flax", "honey", "iron", "peat", "slate"]
TEXT = "".join(
    f"The river {p} runs past the mill. Farmers bring {g} to the mill every autumn, and the miller keeps "
    f"a ledger of every sack of {g}. In the spring the river {p} floods the lower fields and the road to town.\n\n"
    for _ in range(3) for p, g in zip(PLACES, GOODS[3:] + GOODS[:3])
)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = train_tokenizer([TEXT], vocab_size=1000)
    model = GLM(GLMConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, max_seq_len=64)).eval()
    tokens = np.array(tok.encode(TEXT))
    return tok, model, tokens


def test_cloze_items_blank_a_word_whose_evidence_follows(setup):
    tok, _, _ = setup
    items = build_cloze_items(TEXT, tok, n=5, context=20)
    assert items
    for it in items:
        answer = tok.decode(it.candidates[0]).strip()
        assert answer in tok.decode(it.right) and answer not in tok.decode(it.left)
        assert len({len(c) for c in it.candidates}) == 1 and len(it.candidates) == 4


@pytest.mark.parametrize("objective", ["glm", "clm", "mlm"])
def test_probes_score_each_family_on_the_same_text(setup, objective):
    tok, model, tokens = setup
    fam = family(objective)
    infill = infilling_probe(model, fam, tokens, tok.special, seq_len=64, n=4)
    assert 0 <= infill["infill_acc"] <= 1 and infill["infill_nll"] > 0
    ppl = perplexity_probe(model, fam, tokens, tok.special, seq_len=64, n=4)["ppl"]
    assert math.isnan(ppl) if fam == "mlm" else 1 < ppl < 10 * tok.vocab_size
    items = build_cloze_items(TEXT, tok, n=4, context=20)
    assert 0 <= cloze_probe(model, fam, items, tok.special, seq_len=64)["cloze_acc"] <= 1


def test_report_has_mean_and_std_per_arm_and_a_plot(tmp_path):
    results = [
        {"corpus": "wikitext2", "arm": arm, "seed": s, "infill_acc": a + s / 100, "infill_nll": 3.0, "ppl": p, "cloze_acc": 0.5}
        for arm, a, p in (("glm", 0.3, 200.0), ("clm", 0.1, 150.0), ("mlm", 0.2, float("nan")))
        for s in range(3)
    ]
    table = summarize(results)
    assert table[("wikitext2", "glm")]["infill_acc"][0] == pytest.approx(0.31)
    assert table[("wikitext2", "glm")]["infill_acc"][1] == pytest.approx(0.01)
    meta = {"plan": {"model": "glm-mini", "vocab_size": 2048, "seq_len": 128, "batch_size": 16, "lr": 2e-3, "warmup": 20,
                     "steps": 200, "seeds": 3, "shakespeare_steps": 150, "shakespeare_seeds": 1, "n_cloze": 200},
            "params": 1000, "machine": "test", "wall_s": 60.0}  # fmt: skip
    md = write_report(results, meta, tmp_path / "experiments.md").read_text()
    assert "| glm | 0.310 ± 0.010 |" in md and "| mlm |" in md and "n/a" in md
    assert "glm better than clm — holds" in md and "clm better than glm — holds" in md
    assert (tmp_path / "experiments.png").stat().st_size > 1000


def test_ranking_calls_a_gap_inside_the_seed_noise_a_tie():
    from glmaas.training.report import ranking_lines

    table = {("c", "glm"): {"infill_acc": (0.30, 0.02, 3)}, ("c", "clm"): {"infill_acc": (0.29, 0.02, 3)}}
    assert ranking_lines(table, "c") == ["- blank infilling acc: paper expects glm better than clm — tie within seed noise (0.300 vs 0.290)"]
