#!/usr/bin/env bash
# Issue #13: the fine-tuned cross-encoder judge, validated leave-one-source-out / leave-one-model-out on a GPU
# (22 fold fine-tunes + the final one; most of a day on two CPU cores). Lean: only what the judge needs.
#   here, once:   PROFILE=judge bash scripts/gpu/stage_bundle.sh   (-> .stage/p0 .. .stage/pN, 2 chunks)
#   job k:        bash scripts/gpu/round.sh take pK                 (carry .stage/pK)
#   last job:     bash scripts/gpu/round.sh take pN && COMMIT=<sha> bash scripts/gpu/judge_round.sh run   (-> $OUT)
# JUDGE_ARGS adds options to `harmgate scorer validate-judge` (e.g. "--ft-epochs 1"); DEVICE (default cuda).
set -euo pipefail
W=/tmp/round            # where round.sh `take` appends the chunks
OUT=${OUT:-/tmp/out}

run() {
  [ "$(sha256sum "$W/bundle.tar" | cut -d' ' -f1)" = "$(cat "$W/bundle.sha256")" ] || { echo "checksum mismatch"; exit 1; }
  mkdir -p "$W/x" /tmp/site /tmp/data /tmp/hgmodels "$OUT" && tar xf "$W/bundle.tar" -C "$W/x"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$W"/x/wheels/*.whl 2>&1 | grep -v WARNING || true
  cp -r "$W/x/site/"* /tmp/site/ && tar xzf "$W/x/data.tgz" -C /tmp/data
  export PYTHONPATH=/tmp/site:$PWD HARMGATE_DATA_MIRROR=/tmp/data HARMGATE_MODEL_DIR=/tmp/hgmodels PYTHONUNBUFFERED=1
  python3 -c "import torch, transformers; print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"
  echo "commit ${COMMIT:-unknown}" >> "$OUT/versions.txt"
  # shellcheck disable=SC2086  # extra arguments, split on purpose
  python3 -m harmgate scorer validate-judge --device "${DEVICE:-cuda}" --finetune \
    --out-dir /tmp/hgmodels/harmgate/refusal-judge ${JUDGE_ARGS:-} 2>&1 | tee "$OUT/validate-judge.log" \
    | grep -v "it/s\]" || true
  cp /tmp/hgmodels/harmgate/refusal-judge/validation.json "$OUT/" 2>/dev/null || true
  # the fitted folder (~90 MB) stays on the machine: a GPU round fits it again from the committed code
  ls -la "$OUT"
}

"$@"
