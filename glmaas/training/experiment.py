"""`glmaas experiment objectives`: token-level GLM vs causal LM vs span MLM at equal training compute.

Every arm trains the same backbone for the same steps x batch x sequence length (so the same
FLOPs, padding included) on WikiText-2's validation file, several seeds each, one torch thread per
run and `workers` runs at a time. Every `eval_every` steps the probes of `probes.py` run on the
test file: its first half selects each run's best checkpoint (lowest span-infilling NLL), its second
half is what is reported, at the best checkpoint and at the last (equal) step. Unigram and bigram
count models fitted on the training tokens are scored on the same items. The report gives
mean ± std over seeds, the curves, and the "reproduced" verdict of `report.py`. Finished runs are
kept under work_dir, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from glmaas.model.glm_tokenizer import GLMTokenizer, train_tokenizer
from glmaas.training.baselines import CountModel
from glmaas.training.data import TokenShards, tokenize_to_shards
from glmaas.training.probes import (
    baseline_probes,
    build_cloze_items,
    cloze_probe,
    corrupt_neighbours,
    family,
    model_span_scorer,
    span_items,
    span_probe,
)
from glmaas.training.report import write_report
from glmaas.training.train import TrainConfig, train

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = PROJECT_ROOT / ".." / "shared" / "data"
ARMS = ["glm-token", "clm", "mlm"]


@dataclass
class ExperimentPlan:
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    model: str = "glm-micro"
    vocab_size: int = 512
    seq_len: int = 64
    batch_size: int = 16
    steps: int = 20_000
    lr: float = 2e-3
    warmup: int = 500
    dropout: float = 0.1
    seeds: int = 3
    eval_every: int = 1000
    n_spans: int = 128  # held-out windows per half of the test file
    n_cloze: int = 300
    workers: int = 2  # runs at a time, one torch thread each
    train_file: str = "wikitext2-valid.txt"
    eval_file: str = "wikitext2-test.txt"

    @classmethod
    def quick(cls) -> "ExperimentPlan":
        """Minutes, not hours: proves the pipeline end to end, measures nothing."""
        return cls(steps=300, warmup=30, eval_every=100, seeds=1, n_spans=32, n_cloze=64)


def prepare_corpus(plan: ExperimentPlan, data_dir: Path, work_dir: Path) -> Path:
    """One tokenizer and one set of shards, shared by every arm and seed."""
    root = work_dir / "corpus"
    root.mkdir(parents=True, exist_ok=True)
    tok_path = root / "tokenizer.json"
    train_path, eval_path = data_dir / plan.train_file, data_dir / plan.eval_file
    if not tok_path.exists():
        train_tokenizer([train_path.read_text(encoding="utf-8")], plan.vocab_size).save(tok_path)
    tok = GLMTokenizer.load(tok_path)
    for split, path in (("train", train_path), ("eval", eval_path)):
        if not (root / "data" / split / "meta.json").exists():
            tokenize_to_shards([path], tok, root / "data" / split)
    return root


class ProbeSet:
    """The held-out items every checkpoint is probed on, rebuilt identically in every process."""

    def __init__(self, data: Path, root: Path, plan: ExperimentPlan):
        self.tok = GLMTokenizer.load(root / "tokenizer.json")
        self.ids, self.seq_len = self.tok.special, plan.seq_len
        train_tokens = np.asarray(TokenShards(root / "data" / "train").arrays[0], dtype=np.int64)
        held = np.asarray(TokenShards(root / "data" / "eval").arrays[0], dtype=np.int64)
        select, report = held[: len(held) // 2], held[len(held) // 2 :]
        v = self.tok.vocab_size
        self.unigram = CountModel(train_tokens, v, order=1)
        self.bigram = CountModel(train_tokens, v, order=2)
        self.select = span_items(select, self.ids, plan.seq_len, plan.n_spans)
        self.report = span_items(report, self.ids, plan.seq_len, plan.n_spans)
        self.report_corrupted = corrupt_neighbours(self.report, v)
        text = (data / plan.eval_file).read_text(encoding="utf-8")
        self.cloze = build_cloze_items(text[len(text) // 2 :], self.tok, self.unigram, plan.n_cloze)

    def __call__(self, model, fam: str) -> dict[str, float]:
        scorer = model_span_scorer(model, fam, self.ids, self.seq_len)
        out = span_probe(scorer, self.report, self.report_corrupted)
        out["select_span_nll"] = float(-np.concatenate([lp for it in scorer(self.select) for lp in it]).mean())
        out.update(cloze_probe(model, fam, self.cloze, self.ids, self.seq_len))
        return out

    def baselines(self) -> dict[str, dict[str, float]]:
        return {cm.name: baseline_probes(cm, self.report, self.report_corrupted, self.cloze, self.ids) for cm in (self.unigram, self.bigram)}


def run_one(plan: ExperimentPlan, data: Path, root: Path, arm: str, seed: int) -> dict:
    """Train one arm with the probes at every evaluation; cached as result.json in its run folder."""
    import torch

    out = root.parent / "runs" / f"{arm}-seed{seed}"
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    torch.set_num_threads(1)
    probes = ProbeSet(data, root, plan)
    fam = family(arm)
    curve: list[dict] = []

    def probe(model, step: int) -> dict:
        row = probes(model, fam)
        curve.append({"step": step, **row})
        return row

    cfg = TrainConfig(
        data=[str(data / plan.train_file)], eval_data=[str(data / plan.eval_file)], out_dir=str(out), model=plan.model,
        objective=arm, tokenizer=str(root / "tokenizer.json"), shard_dir=str(root / "data"),
        seq_len=plan.seq_len, batch_size=plan.batch_size, steps=plan.steps, lr=plan.lr, warmup=plan.warmup,
        dropout=plan.dropout, seed=seed, eval_every=plan.eval_every, checkpoint_every=plan.steps, progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    trained = train(cfg, probe=probe)
    result = {"arm": arm, "seed": seed, "steps": plan.steps, "train_s": time.perf_counter() - t0,
              "train_loss": trained.get("loss"), "load_avg": os.getloadavg(), "curve": curve}  # fmt: skip
    done.write_text(json.dumps(result, indent=1))
    return result


def run_objectives_experiment(plan: ExperimentPlan, data_dir: str | None, work_dir: str, report: str) -> dict:
    data = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    work = Path(work_dir)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    root = prepare_corpus(plan, data, work)
    probes = ProbeSet(data, root, plan)
    baselines = probes.baselines()
    print(json.dumps({"baselines": baselines, "n_span_items": len(probes.report), "n_cloze": len(probes.cloze)}), flush=True)
    jobs = [(arm, seed) for seed in range(plan.seeds) for arm in plan.arms]
    results = []
    with ProcessPoolExecutor(max_workers=plan.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, plan, data, root, arm, seed) for arm, seed in jobs]
        for f in futures:
            r = f.result()
            results.append(r)
            last = r["curve"][-1] if r["curve"] else {}
            print(json.dumps({"arm": r["arm"], "seed": r["seed"], "train_s": round(r["train_s"], 1),
                              **{k: round(v, 4) for k, v in last.items()}}), flush=True)  # fmt: skip
    import torch

    meta = {
        "plan": asdict(plan),
        "wall_s": time.perf_counter() - t0,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {plan.workers} runs at a time x 1 torch thread, torch {torch.__version__}",
        "params": _param_count(plan, probes.tok.vocab_size),
        "n_span_items": len(probes.report),
        "n_cloze": len(probes.cloze),
    }
    saved = {"meta": meta, "baselines": baselines, "results": results}
    (work / "results.json").write_text(json.dumps(saved, indent=1))
    write_report(saved, Path(report))
    return saved


def rewrite_report(work_dir: str, report: str) -> Path:
    """The report again from a finished experiment's results.json (e.g. after a report change);
    `work_dir` is its folder or the file itself (e.g. a copy under runs/results/)."""
    path = Path(work_dir)
    return write_report(json.loads((path if path.suffix == ".json" else path / "results.json").read_text()), Path(report))


def _param_count(plan: ExperimentPlan, vocab_size: int) -> int:
    from glmaas.model.glm import GLM, GLMConfig

    return GLM(GLMConfig.from_name(plan.model, vocab_size=vocab_size)).num_params()
