#!/usr/bin/env bash
# Issue #13's instruments on one GPU lease: what the CPU box cannot afford to measure.
#   1. the toxicity scorer at the GPU budget (`--budget auto` on a card: scale 6, 2 epochs, batch 64), ARMS (default
#      "quoted noquote": with and without the opt-in quoted counter-speech source, conan_quoted, the held-out side
#      identical; "default": the default sources) x SEEDS (0 1 2): functional-suite AUC, held-out AUC, threshold,
#      false positives, helpful replies flagged (scripts/moderation_fp_replies.py);
#   2. the leave-one-dataset-out table at that budget (10,000-example folds, 1,000 scored per left-out source;
#      LOO_PARTS="" skips it);
#   3. the fine-tuned cross-encoder judge with JUDGE_EPOCHS (default "2 3") epochs, leave one source out (4
#      fine-tunes each; JUDGE_EPOCHS="" skips it).
# All of it runs at once in the background (small models: the card and 16 cores are shared without contention
# worth measuring; no timing here is a benchmark).
#   here, once:   PROFILE=instruments bash scripts/gpu/stage_bundle.sh   (-> .stage/p0 .. .stage/pN)
#   job k < N:    bash scripts/gpu/instruments_round.sh take pK          (carry .stage/pK)
#   job N:        bash scripts/gpu/instruments_round.sh take pN && COMMIT=<sha> bash scripts/gpu/instruments_round.sh launch
#   then:         bash scripts/gpu/instruments_round.sh step 540   back to back (no gap over 30 s) until "all done";
#                 every step copies what exists so far to $OUT.
# On this CPU (arms at the real CPU budget, two at a time, results in /tmp/round/res):
#   PATH=.venv/bin:$PATH HARMGATE_DATA_MIRROR=../shared/data DEVICE=cpu SCORER_BUDGET="--threads 1" PARALLEL=2 \
#   OMP_NUM_THREADS=1 ARMS="cpu-e2 cpu-dyn" LOO_PARTS="" JUDGE_EPOCHS="" bash scripts/gpu/instruments_round.sh experiments
# A smoke run on a CPU (what each command line does, in minutes):
#   PATH=.venv/bin:$PATH HARMGATE_DATA_MIRROR=../shared/data DEVICE=cpu SCORER_BUDGET="--scale 0.05 --max-steps 3" ARMS="default quoted" LOO_ARGS="--loo-scale 0.05 --loo-test 40" SEEDS=0 \
#   LOO_PARTS=ethos JUDGE_EPOCHS=1 JUDGE_EXTRA="--limit 6 --ft-max-steps 2" bash scripts/gpu/instruments_round.sh experiments
set -euo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/round
R=$W/res
mkdir -p "$OUT" "$W" "$R" /tmp/site /tmp/data /tmp/hgmodels
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export HARMGATE_DATA_MIRROR=${HARMGATE_DATA_MIRROR:-/tmp/data} HARMGATE_MODEL_DIR=${HARMGATE_MODEL_DIR:-/tmp/hgmodels}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PARALLEL=${PARALLEL:-64}   # at most this many scorer runs at once (a CPU run here: 2)
DEVICE=${DEVICE:-cuda}
# The knobs arrive as environment strings and are split into lower-case arrays: bash cannot export an array, so
# re-using the upper-case names would drop them for the background `experiments` process (2026-12-03: it ran the
# defaults instead of ARMS=default).
read -ra scorer_budget <<< "${SCORER_BUDGET-}"   # empty: the --budget preset for the device (gpu on a card)
read -ra loo_args <<< "${LOO_ARGS:---epochs 2 --batch-size 64 --loo-scale 2 --loo-test 1000}"
read -ra judge_extra <<< "${JUDGE_EXTRA:-}"
read -ra seeds <<< "${SEEDS:-0 1 2}"
read -ra loo_parts <<< "${LOO_PARTS-dynahate,cmsb_sexism,hatemoji,conan implicit_hate,hatexplain,stormfront,ethos olid,sbic,davidson,toxigen}"
read -ra judge_epochs <<< "${JUDGE_EPOCHS-2 3}"
read -ra arms <<< "${ARMS:-quoted noquote}"   # default: the sources on by default; quoted / noquote: with / without
                                              # conan_quoted, the rest as default; cpu, cpu-e2, cpu-dyn: the CPU
                                              # preset and two same-cost alternatives

log() { echo "[$(date -u +%T)] $*" | tee -a "$R/round.log"; }

take() { cat ".stage/$1/bundle.part" >> "$W/bundle.tar"; cp ".stage/$1/bundle.sha256" "$W/"; ls -la "$W"; }

unpack() {
  [ "$(sha256sum "$W/bundle.tar" | cut -d' ' -f1)" = "$(cat "$W/bundle.sha256")" ] || { echo "bundle: checksum mismatch"; exit 1; }
  mkdir -p "$W/x" && tar xf "$W/bundle.tar" -C "$W/x" && rm -f "$W/bundle.tar"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$W"/x/wheels/*.whl 2>&1 | grep -v WARNING || true
  cp -r "$W/x/site/"* /tmp/site/ && tar xzf "$W/x/data.tgz" -C /tmp/data
  python3 -c "import torch, transformers, detoxify; print('gpu', torch.cuda.get_device_name(0), 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$R/versions.txt"
  echo "commit ${COMMIT:-unknown}" >> "$R/versions.txt"
}

scorer() {  # NAME SEED [extra train options]: train, then score helpful replies with the checkpoint
  local name=$1 seed=$2; shift 2
  python3 -m harmgate scorer train --device "$DEVICE" "${scorer_budget[@]}" --seed "$seed" --output "/tmp/sc/$name" "$@" \
    > "$R/$name.log" 2>&1 || { log "$name: train FAILED"; return 1; }
  cp "/tmp/sc/$name/metrics.json" "$R/$name-metrics.json"
  python3 scripts/moderation_fp_replies.py --checkpoint "/tmp/sc/$name/detoxify.ckpt" \
    --out "$R/$name-helpful-replies.json" >> "$R/$name.log" 2>&1 || log "$name: helpful replies FAILED"
  log "$name: done"
}

loo_part() {  # NAME FOLDS: leave-one-dataset-out folds at the GPU budget (`experiments` merges the parts)
  python3 -m harmgate scorer loo --device "$DEVICE" "${loo_args[@]}" --folds "$2" --out "$R/$1.json" > "$R/$1.log" 2>&1 || { log "$1: FAILED"; return 1; }
  log "$1: done"
}

judge() {  # EPOCHS: the cross-encoder leave one source out
  python3 -m harmgate scorer validate-judge --device "$DEVICE" --finetune --ft-epochs "$1" --no-model-folds --no-harm \
    "${judge_extra[@]}" --out-dir "/tmp/judge-e$1" --report "$R/judge-e$1-validation.json" > "$R/judge-e$1.log" 2>&1 \
    || { log "judge e$1: FAILED"; return 1; }
  log "judge e$1: done"
}

experiments() {
  log "start"
  local pids=() merge=() i=0 seed folds epochs arm
  for seed in "${seeds[@]}"; do
    for arm in "${arms[@]}"; do
      while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
      case "$arm" in
        default) scorer "default-s$seed" "$seed" & pids+=($!) ;;
        quoted) scorer "quoted-s$seed" "$seed" --sources default,conan_quoted & pids+=($!) ;;
        noquote) scorer "noquote-s$seed" "$seed" --sources default,conan_quoted --train-count conan_quoted=0 & pids+=($!) ;;
        # the CPU preset's cost on the card (8 length-sorted chunks as on a CPU), and two ways to spend the same
        # number of examples: half the data twice, or DynaHate doubled with the rest scaled to the same total
        cpu) scorer "cpu-s$seed" "$seed" --budget cpu --length-chunks 8 & pids+=($!) ;;
        cpu-e2) scorer "cpu-e2-s$seed" "$seed" --budget cpu --scale 1 --epochs 2 --length-chunks 8 & pids+=($!) ;;
        cpu-dyn) scorer "cpu-dyn-s$seed" "$seed" --budget cpu --scale 1.307 --train-count dynahate=5200 \
                   --length-chunks 8 & pids+=($!) ;;
        *) log "unknown arm $arm"; return 2 ;;
      esac
    done
  done
  for folds in "${loo_parts[@]}"; do
    loo_part "loo-$i" "$folds" & pids+=($!)
    merge+=(--merge "$R/loo-$i.json"); i=$((i + 1))
  done
  for epochs in "${judge_epochs[@]}"; do judge "$epochs" & pids+=($!); done
  wait "${pids[@]}" || true
  if [ ${#merge[@]} -gt 0 ]; then
    python3 -m harmgate scorer loo "${merge[@]}" --out "$R/loo.json" > "$R/loo-merge.log" 2>&1 || log "loo merge FAILED"
  fi
  log "all done"
  touch "$W/all.done"
}

launch() {
  unpack
  setsid nohup bash "$0" experiments > "$W/experiments.out" 2>&1 < /dev/null &
  sleep 2; log "launched"
  step "${1:-400}"
}

step() {  # wait up to N seconds for the experiments, then copy what exists to $OUT
  local until=$((SECONDS + ${1:-540}))
  while [ ! -f "$W/all.done" ] && [ $SECONDS -lt $until ]; do sleep 10; done
  cp -r "$R"/. "$OUT/" 2>/dev/null || true
  cp "$W/experiments.out" "$OUT/" 2>/dev/null || true
  tail -30 "$R/round.log"
  grep -h "functional\|held-out\|threshold" "$R"/*-s?.log 2>/dev/null | tail -20 || true
  [ -f "$W/all.done" ] && echo "all done" || echo "still running"
}

"$@"
