#!/usr/bin/env bash
# Stage what scripts/gpu/capability.sh needs beyond ../shared/tools/gpu-stage.sh (.stage/a, .stage/b: the SmolLM2
# GGUF and the small wheels): .stage/cap = lm-eval 0.4.13 and the libraries it imports (Python 3.12 wheels, as
# stage_recipes.sh downloads them) + capability-data.tgz, only the files the capability suite reads from the data
# mirror (evals/suites/capability.py's SourceSpec.mirror paths). One device job carries it (under 64 MiB).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DATA=${HARMGATE_DATA_MIRROR:-../shared/data}
PY=${PY:-.venv/bin/python}
rm -rf .stage/cap && mkdir -p .stage/cap
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps "${plat[@]}" -d .stage/cap lm_eval==0.4.13 sacrebleu lxml portalocker colorama \
  tabulate regex chardet
mapfile -t files < <(PYTHONPATH=. "$PY" -c "
from evals.suites.capability import TASKS
print('\n'.join(sorted({t.source.mirror for t in TASKS.values()})))")
tar czf .stage/cap/capability-data.tgz -C "$DATA" "${files[@]}"
sha256sum .stage/cap/capability-data.tgz | awk '{print $1"  .stage/cap/capability-data.tgz"}' > .stage/cap/data.sha256
du -sh .stage/cap
