#!/usr/bin/env bash
# The objectives reproduction (docs/experiments.md): GLM, GLM without span shuffling, causal LM and
# MLM at equal training compute, 3 seeds on WikiText-2 plus a Tiny Shakespeare pass.
# Run from the project root; finished runs under runs/objectives are reused on a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec nice -n 10 "$PY" -m glmaas experiment objectives --work-dir runs/objectives --report docs/experiments.md "$@"
