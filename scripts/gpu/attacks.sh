#!/usr/bin/env bash
# attack_robustness on SmolLM2-135M-Instruct, base and prompted arms (configs/smollm2-attacks-gpu.yaml: 60 requests
# x 17 attacks, 96 new tokens): the GPU measurement behind docs/POLICY.md's any-attack bound. The recipes' runs
# (scripts/gpu/recipes.sh, configs/recipes/_base.yaml) give base and tuned for every recipe.
#
# On the GPU machine after recipes.sh's staging jobs (its header; .stage/e must come from a stage_recipes.sh run
# that includes the garak wheel), in the same machine session:
#   (no carry) : bash scripts/gpu/attacks.sh
# Writes $OUT/attacks.log and $OUT/run-smollm2-attacks-gpu.tgz (the run dir: evals/<arm>/attack_robustness.json
# with every sample, summary.json, report.html).
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/runs
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HARMGATE_DATA_MIRROR=/tmp/data HARMGATE_MODEL_DIR=/tmp/hgmodels
[ -f /tmp/hgmodels/HuggingFaceTB/SmolLM2-135M-Instruct/config.json ] || \
  python3 -m harmgate models pull smollm2 --gguf /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
run=/tmp/runs/smollm2-attacks-gpu
rm -rf "$run"
{
  python3 -m harmgate data configs/smollm2-attacks-gpu.yaml --run-dir "$run"
  python3 -m harmgate eval "$run" --arm base --arm prompted
  python3 -m harmgate report "$run" --no-registry || true
} 2>&1 | tee "$OUT/attacks.log"
tar czf "$OUT/run-smollm2-attacks-gpu.tgz" -C /tmp/runs --exclude=train.jsonl smollm2-attacks-gpu
python3 - "$run" <<'PY' | tee -a "$OUT/attacks.log"
import json, sys
summary = json.load(open(f"{sys.argv[1]}/evals/summary.json"))
for arm, suites in summary["arms"].items():
    m = suites["attack_robustness"]
    print(arm, {k: (round(v["value"], 3), v.get("wilson95")) for k, v in m.items()})
PY
