#!/usr/bin/env bash
# The objectives experiment (docs/experiments.md): token-level GLM, causal LM and span MLM at equal
# training compute; glm-micro, 20,000 steps, 3 seeds, 2 runs at a time on one thread each (sized
# for about 2 hours on 2 idle cores). Run from the project root; finished runs under
# runs/objectives are reused on a rerun. Extra arguments go to the command (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec nice -n 10 "$PY" -m glmaas experiment objectives --work-dir runs/objectives --report docs/experiments-objectives.md "$@"
