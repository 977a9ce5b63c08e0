"""Loss positions per training sample for each arm of the objectives experiment: how many tokens
one sample teaches, which sets the "equal predicted tokens" comparison in docs/experiments.md.

    python runs/loss_positions.py [--samples 3000] [--work-dir runs/objectives]

Builds samples with the experiment's own tokenizer, shards and collators (`prepare_corpus` makes
them under --work-dir if the experiment has not) from windows drawn at random with a fixed seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from glmaas.model.glm_tokenizer import GLMTokenizer
from glmaas.training.data import TokenShards
from glmaas.training.experiment import DEFAULT_DATA_DIR, ExperimentPlan, prepare_corpus
from glmaas.training.objectives import make_objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--work-dir", default="runs/objectives")
    args = parser.parse_args()
    plan = ExperimentPlan()
    root = prepare_corpus(plan, DEFAULT_DATA_DIR, Path(args.work_dir))
    tok = GLMTokenizer.load(root / "tokenizer.json")
    tokens = np.asarray(TokenShards(root / "data" / "train").arrays[0], dtype=np.int64)
    rng = np.random.default_rng(0)
    for arm in plan.arms:
        objective = make_objective(arm, tok.special, tok.vocab_size)
        window = objective.raw_len(plan.seq_len)
        counts = []
        for _ in range(args.samples):
            start = int(rng.integers(0, len(tokens) - window))
            counts.append(int(objective.build(rng, tokens[start : start + window]).loss_mask.sum()))
        print(f"{arm}: {np.mean(counts):.2f} loss positions per sample (sequence {plan.seq_len}, {args.samples} samples)")


if __name__ == "__main__":
    main()
