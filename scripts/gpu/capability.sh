#!/usr/bin/env bash
# Issue #17 on the GPU machine: the capability suite (lm-eval's standard tasks over the mirror's files) on every
# document of every task, SmolLM2-135M-Instruct, through harmgate's own eval stage; plus the wall time of each task.
#
# Here, once: bash ../shared/tools/gpu-stage.sh; bash scripts/gpu/stage_capability.sh
# Then device jobs back to back (the machine keeps /tmp only while it stays up):
#   carry .stage/a             : bash scripts/gpu/capability.sh stage a
#   carry .stage/b             : bash scripts/gpu/capability.sh stage b
#   carry .stage/cap           : COMMIT=<sha> bash scripts/gpu/capability.sh run
#   (no carry)                 : bash scripts/gpu/capability.sh cost
# `run` writes to $OUT:
#   capability-full.json   evals/base/capability.json of the run (every metric with lm-eval's stderr + harmgate's
#                          bootstrap ci95, MMLU by subject and category, provenance; samples dropped)
#   capability.log, versions.txt, run-capability.tgz (the run dir without model weights)
# `cost` (a second job on the same machine, each job has 600 s) writes capability-cost.json:
#   bench/capability_cost.py --per-task 0: seconds per task, each task alone, every document
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/models /tmp/data /tmp/hgmodels /tmp/runs
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$@" 2>&1 | grep -v WARNING || true; }
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HARMGATE_DATA_MIRROR=/tmp/data HARMGATE_MODEL_DIR=/tmp/hgmodels

stage() {
  case "$1" in
    a) cp .stage/a/smollm2.part0 /tmp/models/ ;;
    b) cat /tmp/models/smollm2.part0 .stage/b/smollm2.part1 > /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
       sha256sum -c .stage/b/smollm2.sha256
       pipi .stage/b/*.whl ;;
    *) echo "unknown stage $1" >&2; exit 2 ;;
  esac
  ls -la /tmp/models
}

run() {
  sha256sum -c .stage/cap/data.sha256
  pipi .stage/cap/*.whl
  tar xzf .stage/cap/capability-data.tgz -C /tmp/data
  python3 - <<'PY' | tee "$OUT/versions.txt"
import torch, transformers, datasets, lm_eval
print("gpu", torch.cuda.get_device_name(0), "torch", torch.__version__, "transformers", transformers.__version__,
      "datasets", datasets.__version__, "lm_eval", lm_eval.__version__)
PY
  echo "commit ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" | tee -a "$OUT/versions.txt"
  [ -f /tmp/hgmodels/HuggingFaceTB/SmolLM2-135M-Instruct/config.json ] || \
    python3 -m harmgate models pull smollm2 --gguf /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
  local run=/tmp/runs/capability t0
  rm -rf "$run"
  # The eval stage alone: a run directory with the frozen config (no training data needed for the base arm).
  python3 -c "
from harmgate.config import load_config
from harmgate.rundir import create_run_dir
create_run_dir(load_config('configs/smollm2-capability-full.yaml'), '$run')"
  t0=$(date +%s)
  python3 -m harmgate eval "$run" --arm base 2>&1 | tee "$OUT/capability.log" | { grep -v "it/s]" || true; } | tail -n 5
  echo "harmgate eval (all tasks together): $(( $(date +%s) - t0 )) s" | tee -a "$OUT/capability.log"
  python3 - "$run/evals/base/capability.json" "$OUT/capability-full.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.pop("samples", None)
json.dump(r, open(sys.argv[2], "w"), indent=1)
m = r["metrics"]
for k in sorted(m):
    print(f"{k:32s} {m[k]['value']:.4f}  n={m[k]['n']}  ci95={m[k]['ci95']}  stderr={m[k].get('stderr')}")
PY
  tar czf "$OUT/run-capability.tgz" -C /tmp/runs --exclude=model capability
  ls -la "$OUT"
}

cost() {
  python3 bench/capability_cost.py --model /tmp/hgmodels/HuggingFaceTB/SmolLM2-135M-Instruct --per-task 0 \
    --batch-size 64 --out "$OUT/capability-cost.json" 2>&1 | { grep -v "it/s]" || true; } | tail -n 20
}

case "${1:-}" in
  stage) stage "$2" ;;
  run) run ;;
  cost) cost ;;
  *) echo "usage: $0 stage a|b | run | cost" >&2; exit 2 ;;
esac
