#!/usr/bin/env bash
# Issue 13: score the connected judges (Llama Guard 3, HarmBench classifier, WildGuard) on the labelled replies,
# beside the offline judges, with `harmgate scorer validate-judge --connected ...` (connected judges are fixed:
# scored on every held-out set, never fitted).
#
# Needs, staged beside the working tree (the device machine reaches no hub):
#   $HARMGATE_MODEL_DIR/meta-llama/Llama-Guard-3-8B, .../cais/HarmBench-Llama-2-13b-cls, .../allenai/wildguard
#   (Hugging Face folders: config, safetensors, tokenizer), and the data mirror at $HARMGATE_DATA_MIRROR.
# Usage: OUT=/tmp/out bash scripts/gpu/validate_connected_judges.sh [KIND...]   (default: all three)
# Writes $OUT/validation.json (+ the heads) and $OUT/validate.log.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
: "${HARMGATE_DATA_MIRROR:?set HARMGATE_DATA_MIRROR to the staged data mirror}"
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(llama-guard-3 harmbench wildguard)
args=()
for k in "${kinds[@]}"; do args+=(--connected "$k"); done
python3 -m harmgate scorer validate-judge "${args[@]}" --device cuda --out-dir "$OUT" 2>&1 | tee "$OUT/validate.log"
