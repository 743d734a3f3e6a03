#!/usr/bin/env bash
# Stage what scripts/gpu/capability.sh needs beyond ../shared/tools/gpu-stage.sh (.stage/a, .stage/b: the SmolLM2
# GGUF and the small wheels): .stage/cap = lm-eval 0.4.13 and the libraries its capability tasks import (Python
# 3.12 wheels, as stage_recipes.sh downloads them) + capability-data.tgz, only the files the capability suite reads from the data
# mirror (evals/suites/capability.py's SourceSpec.mirror paths). One device job carries it (under 64 MiB).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DATA=${HARMGATE_DATA_MIRROR:-../shared/data}
PY=${PY:-.venv/bin/python}
rm -rf .stage/cap && mkdir -p .stage/cap
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps "${plat[@]}" -d .stage/cap lm_eval==0.4.13 sacrebleu lxml portalocker colorama \
  tabulate regex chardet nltk absl-py joblib click defusedxml
# TruthfulQA's lm-eval utils import rouge_score (traced with sys.modules beyond the bias suites' path: absl, joblib,
# nltk, rouge_score, defusedxml); it is published only as an sdist: build its pure-Python wheel here.
"$PY" -m pip wheel -q --no-deps -w .stage/cap rouge_score==0.1.2
mapfile -t files < <(PYTHONPATH=. "$PY" -c "
from evals.suites.capability import TASKS
print('\n'.join(sorted({t.source.mirror for t in TASKS.values()})))")
tar czf .stage/cap/capability-data.tgz -C "$DATA" "${files[@]}"
sha256sum .stage/cap/capability-data.tgz | awk '{print $1"  .stage/cap/capability-data.tgz"}' > .stage/cap/data.sha256
du -sh .stage/cap
