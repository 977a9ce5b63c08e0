"""`glmaas train`, `glmaas generate`, `glmaas experiment`: GLM pretraining, sampling from a
checkpoint, and the objectives experiment.

Heavy imports (torch) happen inside the handlers, so that registering these commands costs
nothing and `glmaas keys ...` never loads torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glmaas.cli.common import fail


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `generate` and `experiment` to the `glmaas` command."""
    _add_train(subparsers)
    _add_generate(subparsers)
    _add_experiment(subparsers)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="pretrain a GLM (or a CLM/MLM baseline) on a text or JSONL corpus")
    p.add_argument("--data", nargs="+", required=True, help=".txt or .jsonl files (JSONL: one {'text': ...} per line)")
    p.add_argument("--eval-data", nargs="*", default=[], help="held-out files (default: the last 5%% of --data)")
    p.add_argument("--out", required=True, help="output folder: checkpoint/, metrics.jsonl, loss.png, data/")
    p.add_argument("--model", default="glm-tiny", help="preset: glm-micro, glm-tiny, glm-small, glm-base")
    p.add_argument("--objective", default="glm", help="glm, glm-noshuffle, glm-token, glm-doc, glm-multitask, clm, mlm (span), mlm-bert")
    p.add_argument("--tokenizer", help="an existing tokenizer.json (default: train a byte-level BPE on --data)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="per process, per micro-step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=0.1, help="attention and hidden dropout (THUDM/GLM: 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--stop-at", type=int, help="stop after this step (as if interrupted); resume with --resume")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from glmaas.training.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        data=args.data, out_dir=args.out, eval_data=args.eval_data, model=args.model, objective=args.objective,
        tokenizer=args.tokenizer, vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size,
        grad_accum=args.grad_accum, steps=args.steps, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, dropout=args.dropout, seed=args.seed,
        bf16=args.bf16, eval_every=args.eval_every, eval_batches=args.eval_batches,
        checkpoint_every=args.checkpoint_every, stop_at=args.stop_at, resume=args.resume,
        progress=not args.no_progress, device=args.device,
    )  # fmt: skip
    result = train(cfg)
    if result:
        print(" ".join(f"{k}={v:.4f}" for k, v in result.items()))
    return 0


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="continue a prompt ([gMASK]) or fill its [MASK] blanks")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (model.safetensors, config.json, tokenizer.json)")
    p.add_argument("--prompt", required=True, help="text; blanks marked [MASK] or [sMASK] are filled, else it is continued")
    p.add_argument("--max-new-tokens", type=int, default=32, help="per blank")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from glmaas.model.glm_checkpoint import load_checkpoint
    from glmaas.model.glm_generate import SamplingParams, fill_blanks

    folder = Path(args.checkpoint)
    if not (folder / "config.json").exists() and (folder / "checkpoint" / "config.json").exists():
        folder = folder / "checkpoint"  # the --out folder of `glmaas train`
    if not (folder / "config.json").exists():
        return fail(f"no checkpoint in {args.checkpoint} (expected config.json, model.safetensors, "
                    "tokenizer.json, or a `glmaas train --out` folder)")
    model, tok, _ = load_checkpoint(folder)
    ids = tok.special
    # Byte-level BPE words carry their leading space, so a blank absorbs the space before it,
    # as in training (where "is [MASK]" was "is" + the mask of " Paris").
    prompt = args.prompt
    for m in ("[MASK]", "[sMASK]", "[gMASK]"):
        prompt = prompt.replace(" " + m, m)
    part_a = tok.encode(prompt)
    if not any(t in (ids.mask, ids.smask, ids.gmask) for t in part_a):
        part_a = part_a + [ids.gmask]  # left-to-right continuation
    params = SamplingParams(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    pieces = fill_blanks(model, part_a, ids, params)
    # Splice each piece into its blank; a [gMASK] at the end becomes the continuation.
    out: list[int] = []
    k = 0
    for t in part_a:
        if t in (ids.mask, ids.smask, ids.gmask):
            out.extend(pieces[k])
            k += 1
        else:
            out.append(t)
    print(tok.decode(out))
    return 0


def _add_experiment(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="reproduce GLM's objective comparison at small scale")
    p.add_argument("name", choices=["objectives"])
    p.add_argument("--data-dir", help="folder with the wikitext2-*.txt files (default ../shared/data)")
    p.add_argument("--work-dir", default="runs/objectives", help="checkpoints, logs and per-run metrics")
    p.add_argument("--report", default="docs/experiments-objectives.md", help="generated report (+ -curves.png)")
    p.add_argument("--steps", type=int, help="training steps per run (default from the plan: 20000)")
    p.add_argument("--seeds", type=int, help="seeds per arm (default from the plan: 3)")
    p.add_argument("--eval-every", type=int, help="steps between probes (default from the plan: 1000)")
    p.add_argument("--workers", type=int, help="runs at a time, one torch thread each (default 2)")
    p.add_argument("--arms", nargs="+", help="objectives to compare (default: glm-token clm mlm)")
    p.add_argument("--quick", action="store_true", help="a minutes-long smoke version of the plan")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from --work-dir/results.json (or --work-dir FILE.json)")
    p.set_defaults(func=run_experiment)


def run_experiment(args: argparse.Namespace) -> int:
    from glmaas.training.experiment import (
        ExperimentPlan,
        rewrite_report,
        run_objectives_experiment,
    )
    from glmaas.training.report import verdict_lines

    if args.report_only:
        print(rewrite_report(args.work_dir, args.report).read_text())
        return 0
    plan = ExperimentPlan.quick() if args.quick else ExperimentPlan()
    for name in ("steps", "seeds", "eval_every", "workers", "arms"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    saved = run_objectives_experiment(plan, data_dir=args.data_dir, work_dir=args.work_dir, report=args.report)
    print("\n".join(["Reproduced? (docs/experiments.md, issue criterion)"] + verdict_lines(saved["results"], saved["baselines"])))
    print(f"report: {args.report}")
    return 0
