#!/usr/bin/env bash
# The spine on the GPU image (torch 2.11, transformers 5.17): pull SmolLM2 from the staged GGUF, then the whole
# `harmgate run` (4-bit QLoRA train, merge, eval base + tuned, gate) for the tiny and the demo configs.
#
# Staging (here, from the repo root): bash ../shared/tools/gpu-stage.sh; bash scripts/gpu/stage_extra.sh
# Then three device calls back to back (the machine stays up 30 s between them):
#   1. carry .stage/a: mkdir -p /tmp/models && cp .stage/a/smollm2.part0 /tmp/models/
#   2. carry .stage/b: (gpu-stage.sh's second job: assemble the GGUF, install trl/datasets/... into /tmp/site)
#   3. carry .stage/c .stage/d: bash scripts/gpu/spine_check.sh
# Results (JSON artifacts of both runs and a log) are written under $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site /tmp/data
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .stage/c/*.whl .stage/d/*.whl 2>&1 | tail -2
tar xzf .stage/d/data.tgz -C /tmp/data
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HARMGATE_DATA_MIRROR=/tmp/data HARMGATE_MODEL_DIR=/tmp/hgmodels
python3 - <<'PY' | tee "$OUT/versions.txt"
import torch, transformers, peft, trl, bitsandbytes, datasets
print("gpu", torch.cuda.get_device_name(0), "torch", torch.__version__, "transformers", transformers.__version__,
      "peft", peft.__version__, "trl", trl.__version__, "bitsandbytes", bitsandbytes.__version__,
      "datasets", datasets.__version__)
PY
python3 -m harmgate models pull smollm2 --gguf /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m harmgate models pull tiny
python3 - <<'PY' | tee -a "$OUT/versions.txt"
from align.models import load_tokenizer
t = load_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
print("smollm2 tokenizer: bos", t.bos_token, "eos", t.eos_token, t.eos_token_id, "pad", t.pad_token, t.pad_token_id)
PY
status=0
for cfg in tiny-test smollm2-demo; do
  start=$(date +%s)
  python3 -m harmgate run "configs/$cfg.yaml" --no-publish --run-dir "/tmp/runs/$cfg" > "$OUT/$cfg.log" 2>&1 || status=$?
  echo "$cfg: exit ${status} in $(( $(date +%s) - start )) s" | tee -a "$OUT/versions.txt"
  mkdir -p "$OUT/$cfg"
  for f in train/train_metrics.json evals/summary.json verdict.json data/data_manifest.json; do
    [ -f "/tmp/runs/$cfg/$f" ] && cp "/tmp/runs/$cfg/$f" "$OUT/$cfg/$(basename "$f")"
  done
  grep -E "^(data|train|merge|eval|gate) \(" "$OUT/$cfg.log" || tail -n 20 "$OUT/$cfg.log"
done
exit $status
