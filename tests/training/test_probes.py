"""The experiment's probes, count-model baselines and report, on tiny models and data (what is
measured, not how well)."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from glmaas.model.glm import GLM, GLMConfig
from glmaas.model.glm_tokenizer import train_tokenizer
from glmaas.training.baselines import CountModel
from glmaas.training.probes import (
    SpanItem,
    build_cloze_items,
    cloze_accuracy,
    cloze_probe,
    cloze_scores,
    corrupt_neighbours,
    count_span_scorer,
    family,
    model_span_scorer,
    perplexity_probe,
    span_items,
    span_metrics,
    span_probe,
)
from glmaas.training.report import verdict, verdict_lines, write_report
from tests.training.conftest import DATA

SEQ = 64


@pytest.fixture(scope="module")
def corpus():
    """A 150 KB slice of WikiText-2 (valid) to fit on, the next 250 KB to probe."""
    text = (DATA / "wikitext2-valid.txt").read_text(encoding="utf-8")
    tok = train_tokenizer([text[:150_000]], vocab_size=400)
    train = np.array(tok.encode(text[:150_000]))
    held = np.array(tok.encode(text[150_000:400_000]))
    return tok, train, held, text[150_000:400_000]


def tiny_model(vocab: int) -> GLM:
    torch.manual_seed(0)
    return GLM(GLMConfig(vocab_size=vocab, n_layer=1, n_head=2, n_embd=32, max_seq_len=SEQ)).eval()


def test_span_items_never_blank_cls_the_first_word_or_the_last_token(corpus):
    tok, _, held, _ = corpus
    for it in span_items(held, tok.special, SEQ, n=50):
        assert it.text[0] == tok.special.cls and len(it.text) + 2 * len(it.spans) <= SEQ
        assert it.spans and it.spans[0][0] >= 2 and it.spans[-1][1] <= len(it.text) - 1
        assert all(e1 < s2 for (_, e1), (s2, _) in zip(it.spans, it.spans[1:]))


@pytest.mark.parametrize("order", [1, 2])
def test_a_count_model_scores_exactly_its_own_nll(corpus, order):
    """The probe reports, for a count model, the mean of -log p(token | previous token) over the
    span tokens, computed here from the raw counts."""
    tok, train, held, text = corpus
    v, alpha, beta = tok.vocab_size, 0.5, 10.0
    cm = CountModel(train, v, order=order, alpha=alpha, beta=beta)
    items = span_items(held, tok.special, SEQ, n=20)
    uni, pairs, prev = Counter(train.tolist()), Counter(zip(train[:-1].tolist(), train[1:].tolist())), Counter(train[:-1].tolist())
    expected = []
    for it in items:
        for s, e in it.spans:
            for i in range(s, e):
                p, t = int(it.text[i - 1]), int(it.text[i])
                p1 = (uni[t] + alpha) / (len(train) + alpha * v)
                expected.append(-math.log(p1 if order == 1 else (pairs[(p, t)] + beta * p1) / (prev[p] + beta)))
    got = span_metrics(count_span_scorer(cm)(items))["span_nll"]
    assert got == pytest.approx(float(np.mean(expected)), abs=1e-9)


def test_span_metrics_split_first_middle_last_and_one_token_blanks():
    per_item = [[np.log([0.5]), np.log([0.25, 0.5, 0.5, 0.125])], [np.log([0.5, 0.25])]]
    m = span_metrics(per_item)
    assert m["one_token_nll"] == pytest.approx(-math.log(0.5))
    assert m["first_nll"] == pytest.approx(-(math.log(0.5) + math.log(0.25) + math.log(0.5)) / 3)
    assert m["middle_nll"] == pytest.approx(-math.log(0.5))
    assert m["last_nll"] == pytest.approx(-(math.log(0.125) + math.log(0.25)) / 2)
    assert m["span_nll"] == pytest.approx(-np.log([0.5, 0.25, 0.5, 0.5, 0.125, 0.5, 0.25]).mean())


def test_corruption_replaces_exactly_each_blanks_neighbours(corpus):
    tok, _, held, _ = corpus
    items = span_items(held, tok.special, SEQ, n=20)
    for it, bad in zip(items, corrupt_neighbours(items, tok.vocab_size)):
        neighbours = {j for s, e in it.spans for j in (s - 1, e) if j < len(it.text)}
        changed = set(np.flatnonzero(it.text != bad.text).tolist())
        assert changed == neighbours and (bad.text[list(changed)] >= 8).all() and bad.spans == it.spans


def test_a_model_that_ignores_context_shows_no_neighbour_effect(corpus):
    """With every attention output zeroed, a blank is predicted from its own slot only ([S] or
    [MASK] at the mask's position): corrupting the neighbours must change nothing. The unigram
    model ignores context too; the bigram model reads the left neighbour and pays for it."""
    tok, train, held, text = corpus
    ids = tok.special
    items = span_items(held, ids, SEQ, n=32)
    bad = corrupt_neighbours(items, tok.vocab_size)
    model = tiny_model(tok.vocab_size)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
    for fam in ("glm", "mlm"):
        assert span_probe(model_span_scorer(model, fam, ids, SEQ), items, bad)["neighbour_cost"] == pytest.approx(0.0, abs=1e-5)
    assert span_probe(count_span_scorer(CountModel(train, tok.vocab_size, 1)), items, bad)["neighbour_cost"] == 0.0
    assert span_probe(count_span_scorer(CountModel(train, tok.vocab_size, 2)), items, bad)["neighbour_cost"] > 0.3


@pytest.mark.parametrize("objective", ["glm-token", "clm", "mlm"])
def test_every_family_scores_the_same_span_tokens(corpus, objective):
    tok, _, held, _ = corpus
    items = span_items(held, tok.special, SEQ, n=8)
    per_item = model_span_scorer(tiny_model(tok.vocab_size), family(objective), tok.special, SEQ)(items)
    assert [[len(lp) for lp in it] for it in per_item] == [[e - s for s, e in it.spans] for it in items]
    m = span_metrics(per_item)
    assert all(math.isfinite(m[k]) and m[k] > 0 for k in ("span_nll", "first_nll"))


def test_frequency_matched_cloze_puts_a_unigram_scorer_at_chance(corpus):
    """Distractors are the answer's neighbours in the unigram ranking (same token count), the answer
    at a uniform place among them: a scorer that knows only the counts is right 1 time in 4. The
    bigram model, which reads the blank's neighbours, does better."""
    tok, train, _, text = corpus
    uni = CountModel(train, tok.vocab_size, 1)
    items = build_cloze_items(text, tok, uni, n=300)
    assert len(items) >= 100
    for it in items:
        answer = it.candidates[it.answer]
        assert it.right[-len(answer) :] == answer and len({len(c) for c in it.candidates}) == 1
        assert len({tuple(c) for c in it.candidates}) == 4 and len(it.left) <= 24 and len(it.right) <= 24
    acc = cloze_accuracy(cloze_scores("count", items, tok.special, counts=uni), items)
    top = np.mean([np.argmax([uni.unigram_logp[c].sum() for c in it.candidates]) == it.answer for it in items])
    assert acc == top and 0.15 < acc < 0.35
    assert cloze_accuracy(cloze_scores("count", items, tok.special, counts=CountModel(train, tok.vocab_size, 2)), items) > 0.4


@pytest.mark.parametrize("objective", ["glm-token", "clm", "mlm"])
def test_cloze_and_perplexity_probes_run_for_every_family(corpus, objective):
    tok, train, held, text = corpus
    fam = family(objective)
    items = build_cloze_items(text, tok, CountModel(train, tok.vocab_size, 1), n=8)
    out = cloze_probe(tiny_model(tok.vocab_size), fam, items, tok.special, SEQ)
    assert 0 <= out["cloze_acc"] <= 1 and (("cloze_acc_left" in out) == (fam == "clm"))
    ppl = perplexity_probe(tiny_model(tok.vocab_size), fam, held, tok.special, SEQ, n=4)["ppl"]
    assert math.isnan(ppl) if fam == "mlm" else 1 < ppl < 10 * tok.vocab_size


def fake_results(gap: float, noise: float, first: float, cost: float) -> list[dict]:
    rows = []
    for seed in range(3):
        for arm, nll in (("glm-token", 4.0), ("clm", 4.0 + gap + noise * (seed - 1)), ("mlm", 4.5)):
            curve = [{"step": s, "select_span_nll": nll + 1 / s, "span_nll": nll + 1 / s, "first_nll": first, "middle_nll": 3.0,
                      "last_nll": 3.5, "one_token_nll": 5.0, "first_nll_corrupt": first + cost, "neighbour_cost": cost,
                      "cloze_acc": 0.4} for s in (1, 2)]  # fmt: skip
            rows.append({"arm": arm, "seed": seed, "curve": curve})
    return rows


BASE = {"unigram": {"first_nll": 6.0, "span_nll": 6.0, "cloze_acc": 0.25, "neighbour_cost": 0.0},
        "bigram": {"first_nll": 5.0, "span_nll": 5.0, "cloze_acc": 0.3, "neighbour_cost": 0.4}}  # fmt: skip


def test_the_reproduced_verdict_applies_the_four_conditions():
    from glmaas.training.report import last_row

    assert all(met for _, _, met in verdict(fake_results(0.2, 0.01, 5.5, 0.5), BASE, last_row))
    met = [m for _, _, m in verdict(fake_results(0.05, 0.01, 5.95, 0.1), BASE, last_row)]
    assert met == [False, True, False, False]
    noisy = [m for _, _, m in verdict(fake_results(0.2, 0.2, 5.5, 0.5), BASE, last_row)]
    assert noisy == [True, False, True, True]


def test_report_has_both_tables_the_baselines_the_verdict_and_curves(tmp_path):
    saved = {"results": fake_results(0.2, 0.01, 5.5, 0.5), "baselines": BASE,
             "meta": {"plan": {"model": "glm-micro", "vocab_size": 512, "seq_len": 64, "batch_size": 16, "steps": 2, "lr": 2e-3,
                               "warmup": 1, "dropout": 0.1, "seeds": 3, "eval_every": 1, "train_file": "a", "eval_file": "b"},
                      "params": 1000, "machine": "test", "wall_s": 60.0, "load_avg_start": [1.0], "load_avg_end": [2.0],
                      "n_span_items": 8, "n_cloze": 8}}  # fmt: skip
    md = write_report(saved, tmp_path / "objectives.md").read_text()
    assert "| glm-token | 4.500 ± 0.000 |" in md  # last step: 4.0 + 1/2
    assert "| glm-token | 2 ± 0 | 4.500" in md  # best checkpoint: step 2 (lowest selection NLL)
    assert "*unigram count model*" in md and "at the last step (equal steps): reproduced" in md
    assert (tmp_path / "objectives-curves.png").stat().st_size > 1000
    assert any("not reproduced" in line for line in verdict_lines(fake_results(0.05, 0.01, 5.5, 0.5), BASE))


def test_span_item_type_is_what_the_scorers_take():
    it = SpanItem(np.array([2, 10, 11, 12, 13]), [(2, 3)])
    assert count_span_scorer(CountModel(np.arange(8, 20), 20, 1))([it])[0][0].shape == (1,)


def test_the_experiment_runs_end_to_end_and_reports_the_verdict(tmp_path):
    """The whole pipeline on 200 KB of each file: training with probes, baselines, report, curves."""
    from glmaas.training.experiment import ExperimentPlan, rewrite_report, run_objectives_experiment

    data = tmp_path / "data"
    data.mkdir()
    for name in ("wikitext2-valid.txt", "wikitext2-test.txt"):
        (data / name).write_text((DATA / name).read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    plan = ExperimentPlan(steps=4, warmup=1, eval_every=2, seeds=2, n_spans=4, n_cloze=8, workers=2)
    saved = run_objectives_experiment(plan, str(data), str(tmp_path / "work"), str(tmp_path / "report.md"))
    assert sorted((r["arm"], r["seed"]) for r in saved["results"]) == sorted((a, s) for a in ("glm-token", "clm", "mlm") for s in (0, 1))
    assert all([row["step"] for row in r["curve"]] == [2, 4] for r in saved["results"])
    assert set(saved["baselines"]) == {"unigram", "bigram"} and saved["baselines"]["unigram"]["neighbour_cost"] == 0.0
    md = (tmp_path / "report.md").read_text()
    assert "### Reproduced?" in md and "| glm-token |" in md and (tmp_path / "report-curves.png").exists()
    again = rewrite_report(str(tmp_path / "work" / "results.json"), str(tmp_path / "again.md")).read_text()
    assert again == md.replace("report-curves.png", "again-curves.png")
