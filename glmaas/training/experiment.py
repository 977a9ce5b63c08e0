"""`glmaas experiment objectives`: GLM vs its ablation vs CLM vs MLM at equal training compute.

Every arm trains the same backbone for the same steps x batch x sequence length (so the same
FLOPs; padding included), on WikiText-2 (valid to train, test to evaluate) and on Tiny
Shakespeare (first 90% / last 10%), several seeds each; then the probes of `probes.py` run on the
held-out text. Results go to a Markdown report with mean ± std and a PNG plot. Finished runs are
kept under work_dir, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from glmaas.model.glm_checkpoint import load_checkpoint
from glmaas.model.glm_tokenizer import GLMTokenizer, train_tokenizer
from glmaas.training.data import TokenShards, tokenize_to_shards
from glmaas.training.probes import build_cloze_items, cloze_probe, family, infilling_probe, perplexity_probe
from glmaas.training.report import write_report
from glmaas.training.train import TrainConfig, train

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = PROJECT_ROOT / ".." / "shared" / "data"
ARMS = ["glm", "glm-noshuffle", "clm", "mlm"]


@dataclass
class ExperimentPlan:
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    model: str = "glm-mini"
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 200  # WikiText-2; about 2 minutes per run on 2 idle cores
    lr: float = 2e-3
    warmup: int = 20
    seeds: int = 3
    shakespeare_steps: int = 150
    shakespeare_seeds: int = 3
    n_infill: int = 64
    n_ppl: int = 64
    n_cloze: int = 200

    @classmethod
    def quick(cls) -> "ExperimentPlan":
        return cls(model="glm-micro", steps=20, warmup=5, seeds=1, shakespeare_steps=10, n_infill=8, n_ppl=8, n_cloze=16)


def _corpora(data_dir: Path, work_dir: Path) -> dict[str, tuple[Path, Path]]:
    """(train file, eval file) per corpus; Shakespeare is split 90/10 at a line boundary."""
    shakes = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    cut = int(0.9 * len(shakes))
    split = work_dir / "shakespeare"
    split.mkdir(parents=True, exist_ok=True)
    (split / "train.txt").write_text("".join(shakes[:cut]), encoding="utf-8")
    (split / "eval.txt").write_text("".join(shakes[cut:]), encoding="utf-8")
    return {
        "wikitext2": (data_dir / "wikitext2-valid.txt", data_dir / "wikitext2-test.txt"),
        "shakespeare": (split / "train.txt", split / "eval.txt"),
    }


def _prepare_corpus(name: str, train_path: Path, eval_path: Path, work_dir: Path, vocab_size: int) -> Path:
    """One tokenizer and one set of shards per corpus, shared by every arm and seed."""
    root = work_dir / name
    root.mkdir(parents=True, exist_ok=True)
    tok_path = root / "tokenizer.json"
    if not tok_path.exists():
        train_tokenizer([train_path.read_text(encoding="utf-8")], vocab_size).save(tok_path)
    tok = GLMTokenizer.load(tok_path)
    for split, path in (("train", train_path), ("eval", eval_path)):
        if not (root / "data" / split / "meta.json").exists():
            tokenize_to_shards([path], tok, root / "data" / split)
    return root


def run_one(plan: ExperimentPlan, corpus: str, root: Path, arm: str, seed: int, steps: int, train_path: Path, eval_path: Path) -> dict:
    """Train one arm and probe it; the result is cached as result.json in its run folder."""
    out = root / "runs" / f"{arm}-seed{seed}"
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = TrainConfig(
        data=[str(train_path)], eval_data=[str(eval_path)], out_dir=str(out), model=plan.model, objective=arm,
        tokenizer=str(root / "tokenizer.json"), shard_dir=str(root / "data"), seq_len=plan.seq_len,
        batch_size=plan.batch_size, steps=steps, lr=plan.lr, warmup=plan.warmup, seed=seed,
        eval_every=steps, checkpoint_every=steps, progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    trained = train(cfg)
    train_s = time.perf_counter() - t0
    model, tok, _ = load_checkpoint(out / "checkpoint")
    eval_tokens = np.asarray(TokenShards(root / "data" / "eval").arrays[0], dtype=np.int64)
    items = build_cloze_items(eval_path.read_text(encoding="utf-8"), tok, plan.n_cloze)
    fam, ids = family(arm), tok.special
    result = {"corpus": corpus, "arm": arm, "seed": seed, "steps": steps, "train_s": train_s,
              "train_loss": trained.get("loss"), "n_cloze": len(items)}  # fmt: skip
    result.update(infilling_probe(model, fam, eval_tokens, ids, plan.seq_len, plan.n_infill))
    result.update(perplexity_probe(model, fam, eval_tokens, ids, plan.seq_len, plan.n_ppl))
    result.update(cloze_probe(model, fam, items, ids, plan.seq_len))
    done.write_text(json.dumps(result, indent=1))
    return result


def run_objectives_experiment(plan: ExperimentPlan, data_dir: str | None, work_dir: str, report: str) -> list[dict]:
    data = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    work = Path(work_dir)
    t0 = time.perf_counter()
    results = []
    schedule = {"wikitext2": (plan.steps, plan.seeds), "shakespeare": (plan.shakespeare_steps, plan.shakespeare_seeds)}
    for corpus, (train_path, eval_path) in _corpora(data, work).items():
        root = _prepare_corpus(corpus, train_path, eval_path, work, plan.vocab_size)
        steps, seeds = schedule[corpus]
        for seed in range(seeds):
            for arm in plan.arms:
                r = run_one(plan, corpus, root, arm, seed, steps, train_path, eval_path)
                results.append(r)
                print(json.dumps(r), flush=True)
    meta = {
        "plan": asdict(plan),
        "wall_s": time.perf_counter() - t0,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "params": _param_count(work),
    }
    (work / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_report(results, meta, Path(report))
    return results


def rewrite_report(work_dir: str, report: str) -> Path:
    """The report again from a finished experiment's results.json (e.g. after a report change)."""
    saved = json.loads((Path(work_dir) / "results.json").read_text())
    return write_report(saved["results"], saved["meta"], Path(report))


def _param_count(work: Path) -> int:
    ckpt = next((work / "wikitext2" / "runs").glob("*/checkpoint"), None)
    if ckpt is None:
        return 0
    model, _, _ = load_checkpoint(ckpt)
    return model.num_params()
