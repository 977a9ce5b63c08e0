"""Where the blank-infilling NLL goes: the first token of each span vs the rest, per model.

    python runs/infill_breakdown.py runs/objectives-1000/wikitext2 glm clm

Same held-out windows and spans as `probes.infilling_probe`. The first token of a span is where
the models differ in what they can see: CLM has its left neighbour right before it; GLM has to find
its blank's neighbours in Part A through the position ids.
"""

import sys
from pathlib import Path

import numpy as np

from glmaas.model.glm_checkpoint import load_checkpoint
from glmaas.training.data import TokenShards
from glmaas.training.probes import (
    PROBE_SEED,
    clm_sample,
    family,
    glm_infill_sample,
    mlm_sample,
    place_spans,
    sample_span_lengths,
    score,
    windows,
)


def breakdown(root: Path, arm: str, seq_len: int = 128, n: int = 64) -> tuple[float, float]:
    model, tok, _ = load_checkpoint(root / "runs" / f"{arm}-seed0" / "checkpoint")
    ids, fam = tok.special, family(arm)
    tokens = np.asarray(TokenShards(root / "data" / "eval").arrays[0], dtype=np.int64)
    rng = np.random.default_rng(PROBE_SEED + 1)
    first, rest = [], []
    for x in windows(tokens, n, int(seq_len * 0.8)):
        spans = place_spans(rng, len(x), sample_span_lengths(rng, len(x)))
        scored = np.zeros(len(x), bool)
        for s, e in spans:
            scored[s:e] = True
        if fam == "clm":
            scored[0] = False
        sample = {"glm": lambda: glm_infill_sample(x, spans, ids), "mlm": lambda: mlm_sample(x, scored, ids),
                  "clm": lambda: clm_sample(x, scored)}[fam]()  # fmt: skip
        logp = score(model, [sample], seq_len, ids.pad)[0]
        # scored tokens come out in text order for all three (GLM's Part B is in sorted order)
        is_first = np.array([i in {s for s, _ in spans} for i in np.flatnonzero(scored)])
        first += list(-logp[is_first])
        rest += list(-logp[~is_first])
    return float(np.mean(first)), float(np.mean(rest))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    print(f"{'arm':<14} {'NLL first token':>16} {'NLL rest of span':>17}")
    for arm in sys.argv[2:]:
        f, r = breakdown(root, arm)
        print(f"{arm:<14} {f:16.3f} {r:17.3f}")
