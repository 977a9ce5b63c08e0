"""The objectives experiment's report: Markdown tables (mean ± std over seeds), the rankings set
against the paper's claims, and one PNG of every metric per arm and corpus."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# metric -> (column title, higher is better, format)
METRICS = {
    "infill_acc": ("blank infilling acc ↑", True, "{:.3f}"),
    "infill_nll": ("blank infilling NLL ↓", False, "{:.3f}"),
    "ppl": ("left-to-right ppl ↓", False, "{:.1f}"),
    "cloze_acc": ("cloze acc, evidence after blank ↑ (chance 0.25)", True, "{:.3f}"),
}

# What glm.md §2.3 expects, at small scale, as (better, worse) pairs per metric.
EXPECTED = {
    "infill_acc": [("glm", "clm"), ("glm", "glm-noshuffle")],
    "infill_nll": [("glm", "clm"), ("glm", "glm-noshuffle")],
    "ppl": [("clm", "glm")],
    "cloze_acc": [("glm", "clm"), ("mlm", "clm"), ("glm", "mlm"), ("glm", "glm-noshuffle")],
}


def summarize(results: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(corpus, arm) -> metric -> (mean, std, n); NaNs (metric not defined for the arm) skipped."""
    table: dict = {}
    for corpus in dict.fromkeys(r["corpus"] for r in results):
        for arm in dict.fromkeys(r["arm"] for r in results):
            rows = [r for r in results if r["corpus"] == corpus and r["arm"] == arm]
            if not rows:
                continue
            cell = {}
            for m in METRICS:
                vals = np.array([r[m] for r in rows if r.get(m) is not None and not math.isnan(r[m])])
                cell[m] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)) if len(vals) else (math.nan, 0.0, 0)
            table[(corpus, arm)] = cell
    return table


def _fmt(cell: tuple[float, float, int], fmt: str) -> str:
    mean, std, n = cell
    if n == 0:
        return "n/a"
    return fmt.format(mean) + (f" ± {fmt.format(std)}" if n > 1 else "")


def ranking_lines(table: dict, corpus: str) -> list[str]:
    lines = []
    for m, pairs in EXPECTED.items():
        title, higher, _ = METRICS[m]
        for better, worse in pairs:
            a, b = table.get((corpus, better), {}).get(m), table.get((corpus, worse), {}).get(m)
            if not a or not b or a[2] == 0 or b[2] == 0:
                continue
            holds = a[0] > b[0] if higher else a[0] < b[0]
            verdict = "holds" if holds else "**does not hold**"
            if a[2] > 1 and b[2] > 1 and abs(a[0] - b[0]) <= a[1] + b[1]:
                verdict = "tie within seed noise"  # the gap is smaller than the two stds together
            name = title.split(" ↑")[0].split(" ↓")[0]
            lines.append(f"- {name}: paper expects {better} better than {worse} — {verdict} ({a[0]:.3f} vs {b[0]:.3f})")
    return lines


def plot(table: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = list(dict.fromkeys(c for c, _ in table))
    arms = list(dict.fromkeys(a for _, a in table))
    fig, axes = plt.subplots(len(corpora), len(METRICS), figsize=(4 * len(METRICS), 3.2 * len(corpora)), squeeze=False)
    for i, corpus in enumerate(corpora):
        for j, (m, (title, _, _)) in enumerate(METRICS.items()):
            ax = axes[i][j]
            cells = [table.get((corpus, a), {}).get(m, (math.nan, 0.0, 0)) for a in arms]
            ax.bar(arms, [c[0] for c in cells], yerr=[c[1] for c in cells], capsize=3, color="C0")
            ax.set_title(f"{corpus}: {title}", fontsize=8)
            ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def write_report(results: list[dict], meta: dict, path: Path) -> Path:
    table = summarize(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    plot(table, png)
    plan = meta["plan"]
    out = [
        "# Experiments",
        "",
        "## GLM objectives at equal training compute (glm.md §2.3)",
        "",
        "Command: `glmaas experiment objectives` (also `python -m glmaas experiment objectives`).",
        "",
        f"Setup: preset `{plan['model']}` ({meta['params']:,} parameters), byte-level BPE vocabulary "
        f"{plan['vocab_size']}, sequence length {plan['seq_len']}, batch {plan['batch_size']}, AdamW lr "
        f"{plan['lr']} with {plan['warmup']} warmup steps and cosine decay. WikiText-2: {plan['steps']} steps "
        f"× {plan['seeds']} seeds, train on `wikitext2-valid.txt`, evaluate on `wikitext2-test.txt`. Tiny "
        f"Shakespeare: {plan['shakespeare_steps']} steps × {plan['shakespeare_seeds']} seed(s), first 90% / last 10% "
        "of lines. Every arm processes the same steps × batch × length, so the same training FLOPs.",
        "",
        f"Machine: {meta['machine']}; whole experiment {meta['wall_s'] / 60:.1f} min wall clock.",
        "",
        "Arms: `glm` = Token+Doc blank infilling (50% `[MASK]` Poisson(3) spans to 15%, 50% `[gMASK]` "
        "suffix of 50–100%); `glm-noshuffle` = the same without shuffling Part B; `clm` = causal LM; "
        "`mlm` = BERT-style 15% masking. Probes (`glmaas/training/probes.py`): held-out Poisson(3) span "
        "infilling (teacher-forced token accuracy and per-token NLL; CLM sees only the left context, MLM is "
        "given the oracle span length), perplexity of the last 75% of a window given the first 25% (MLM: n/a), "
        f"and a 4-way cloze whose evidence (the same word again) follows the blank ({plan['n_cloze']} items max).",
        "",
    ]
    for corpus in dict.fromkeys(c for c, _ in table):
        out += [f"### {corpus}", "", "| arm | " + " | ".join(t for t, _, _ in METRICS.values()) + " |"]
        out.append("|---" * (len(METRICS) + 1) + "|")
        for (c, arm), cell in table.items():
            if c == corpus:
                out.append(f"| {arm} | " + " | ".join(_fmt(cell[m], f) for m, (_, _, f) in METRICS.items()) + " |")
        out += ["", "Against the paper's claims:", ""] + ranking_lines(table, corpus) + [""]
    out += [f"![objectives]({png.name})", ""]
    path.write_text("\n".join(out))
    return path
