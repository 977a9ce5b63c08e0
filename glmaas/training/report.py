"""The objectives experiment's report: tables (mean ± std over seeds) at the last step and at each
run's best checkpoint, the count-model baselines beside them, the "reproduced" verdict, and the
curves of every probe over training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# metric -> (column title, format)
METRICS = {
    "span_nll": ("span NLL ↓", "{:.3f}"),
    "first_nll": ("first token ↓", "{:.3f}"),
    "middle_nll": ("middle ↓", "{:.3f}"),
    "last_nll": ("last ↓", "{:.3f}"),
    "one_token_nll": ("one-token blanks ↓", "{:.3f}"),
    "first_nll_corrupt": ("first token, neighbours random ↓", "{:.3f}"),
    "neighbour_cost": ("neighbour cost (nats)", "{:+.3f}"),
    "cloze_acc": ("freq-matched cloze ↑ (chance 0.25)", "{:.3f}"),
}

# What "reproduced" means (the criterion), for the infilling arm against CLM.
GLM_ARM, CLM_ARM = "glm-token", "clm"
MIN_SPAN_GAP = 0.10  # nats/token, CLM's span NLL minus GLM's
GAP_STDS = 3.0  # the gap over the std of the per-seed gaps
FIRST_TOKEN_MARGIN = 0.10  # nats under the unigram model's first-token NLL
MIN_NEIGHBOUR_COST = 0.30  # nats on the first token when the blank's neighbours are random


def last_row(result: dict) -> dict:
    return result["curve"][-1]


def best_row(result: dict) -> dict:
    """The evaluation with the lowest span NLL on the selection half (not the reported half)."""
    return min(result["curve"], key=lambda r: r["select_span_nll"])


def summarize(results: list[dict], pick) -> dict[str, dict[str, tuple[float, float, int]]]:
    """arm -> metric -> (mean, std, n) over seeds, each seed's row chosen by `pick`."""
    table: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in results):
        rows = [pick(r) for r in results if r["arm"] == arm and r["curve"]]
        cell = {}
        for m in list(METRICS) + ["step", "cloze_acc_left"]:
            vals = np.array([row[m] for row in rows if m in row and not math.isnan(row[m])], dtype=float)
            cell[m] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)) if len(vals) else (math.nan, 0.0, 0)
        table[arm] = cell
    return table


def verdict(results: list[dict], baselines: dict, pick) -> list[tuple[str, str, bool]]:
    """(criterion, measured, met) for the issue's four conditions; empty if an arm is missing."""
    by_seed = {(r["arm"], r["seed"]): pick(r) for r in results if r["curve"]}
    seeds = sorted(s for a, s in by_seed if a == GLM_ARM and (CLM_ARM, s) in by_seed)
    if not seeds:
        return []
    glm = [by_seed[(GLM_ARM, s)] for s in seeds]
    gaps = np.array([by_seed[(CLM_ARM, s)]["span_nll"] - g["span_nll"] for s, g in zip(seeds, glm)])
    gap, spread = float(gaps.mean()), float(gaps.std(ddof=1)) if len(gaps) > 1 else math.nan
    uni = baselines["unigram"]["first_nll"]
    firsts = np.array([g["first_nll"] for g in glm])
    cost = float(np.mean([g["neighbour_cost"] for g in glm]))
    return [
        (f"GLM's span NLL at least {MIN_SPAN_GAP:.2f} nats/token below CLM's", f"CLM − GLM = {gap:+.3f}", gap >= MIN_SPAN_GAP),
        (f"the gap over {GAP_STDS:.0f} std of the per-seed gaps ({len(gaps)} seed{'s' if len(gaps) > 1 else ''})",
         f"std {spread:.3f}" if not math.isnan(spread) else "one seed: no std", not math.isnan(spread) and gap > GAP_STDS * spread),
        (f"GLM's first-token NLL at least {FIRST_TOKEN_MARGIN:.2f} under the unigram model's, every seed",
         f"{firsts.mean():.3f} (seeds {', '.join(f'{f:.3f}' for f in firsts)}) vs unigram {uni:.3f}",
         bool(firsts.mean() <= uni - FIRST_TOKEN_MARGIN and firsts.max() < uni)),
        (f"corrupting the neighbours costs GLM at least {MIN_NEIGHBOUR_COST:.2f} nats (first token)", f"{cost:+.3f}", cost >= MIN_NEIGHBOUR_COST),
    ]  # fmt: skip


def verdict_lines(results: list[dict], baselines: dict) -> list[str]:
    out = []
    for name, pick in (("at the last step (equal steps)", last_row), ("at each run's best checkpoint", best_row)):
        v = verdict(results, baselines, pick)
        if not v:
            out.append(f"- {name}: needs the `{GLM_ARM}` and `{CLM_ARM}` arms")
            continue
        ok = all(met for _, _, met in v)
        out.append(f"- **{name}: {'reproduced' if ok else 'not reproduced'}**")
        out += [f"  - {'met' if met else 'NOT met'}: {crit} — {measured}" for crit, measured, met in v]
    return out


def _fmt(cell: tuple[float, float, int], fmt: str, std_fmt: str = "{:.3f}") -> str:
    mean, std, n = cell
    if n == 0:
        return "n/a"
    return fmt.format(mean) + (" ± " + std_fmt.format(std) if n > 1 else "")


def table_lines(table: dict, baselines: dict, with_step: bool) -> list[str]:
    head = ["arm"] + (["step"] if with_step else []) + [t for t, _ in METRICS.values()]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm, cell in table.items():
        step = [_fmt(cell["step"], "{:.0f}", "{:.0f}")] if with_step else []
        out.append(f"| {arm} | " + " | ".join(step + [_fmt(cell[m], f) for m, (_, f) in METRICS.items()]) + " |")
    for name, row in baselines.items():
        step = ["—"] if with_step else []
        out.append(f"| *{name} count model* | " + " | ".join(step + [f.format(row[m]) if m in row else "—" for m, (_, f) in METRICS.items()]) + " |")
    return out


CURVES = [("span_nll", "span NLL (nats/token)"), ("first_nll", "first-token NLL"),
          ("neighbour_cost", "neighbour cost (nats)"), ("cloze_acc", "freq-matched cloze acc")]  # fmt: skip


def plot_curves(results: list[dict], baselines: dict, png: Path) -> Path:
    """Each probe over training: mean over seeds, shaded min..max; count models dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    arms = list(dict.fromkeys(r["arm"] for r in results))
    for ax, (m, title) in zip(axes, CURVES):
        for i, arm in enumerate(arms):
            curves = [r["curve"] for r in results if r["arm"] == arm and r["curve"]]
            n = min(len(c) for c in curves)
            steps = [row["step"] for row in curves[0][:n]]
            vals = np.array([[row[m] for row in c[:n]] for c in curves])
            ax.plot(steps, vals.mean(0), color=f"C{i}", label=arm)
            if len(vals) > 1:
                ax.fill_between(steps, vals.min(0), vals.max(0), color=f"C{i}", alpha=0.2)
        for j, (name, row) in enumerate(baselines.items()):
            if m in row:
                ax.axhline(row[m], color="gray", ls="--" if j == 0 else ":", lw=1, label=f"{name} count model")
        if m == "cloze_acc":
            ax.axhline(0.25, color="k", lw=0.6, label="chance")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def write_report(saved: dict, path: Path) -> Path:
    """Markdown + `<name>-curves.png` next to it, from an experiment's saved results."""
    results, baselines, meta = saved["results"], saved["baselines"], saved["meta"]
    plan = meta["plan"]
    path.parent.mkdir(parents=True, exist_ok=True)
    png = plot_curves(results, baselines, path.with_name(path.stem + "-curves.png"))
    la0, la1 = meta["load_avg_start"], meta["load_avg_end"]
    out = [
        "## Objectives experiment: results (generated)",
        "",
        f"Preset `{plan['model']}` ({meta['params']:,} parameters), byte-level BPE vocabulary {plan['vocab_size']}, "
        f"sequence {plan['seq_len']}, batch {plan['batch_size']}, {plan['steps']:,} steps, AdamW lr {plan['lr']} "
        f"({plan['warmup']} warmup, cosine), dropout {plan['dropout']}, {plan['seeds']} seed(s), probes every "
        f"{plan['eval_every']:,} steps. Train `{plan['train_file']}`, probe `{plan['eval_file']}` "
        f"({meta['n_span_items']} span windows per half, {meta['n_cloze']} cloze items).",
        "",
        f"Machine: {meta['machine']}; {meta['wall_s'] / 60:.1f} min wall clock; load average "
        f"{la0[0]:.1f} at the start, {la1[0]:.1f} at the end.",
        "",
        "### At the last step (equal steps)",
        "",
        *table_lines(summarize(results, last_row), baselines, with_step=False),
        "",
        "### At each run's best checkpoint (lowest span NLL on the selection half)",
        "",
        *table_lines(summarize(results, best_row), baselines, with_step=True),
        "",
    ]
    left = summarize(results, last_row).get(CLM_ARM, {}).get("cloze_acc_left")
    if left and left[2]:
        out += [f"CLM on the cloze with the left context only (no evidence): {_fmt(left, '{:.3f}')} at the last step.", ""]
    out += ["### Reproduced?", "", *verdict_lines(results, baselines), "", f"![curves]({png.name})", ""]
    path.write_text("\n".join(out))
    return path
