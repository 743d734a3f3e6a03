#!/usr/bin/env bash
# Issue #14 (+ #15, #17 numbers) on one GPU machine lease, as device jobs back to back (the machine keeps /tmp
# and background jobs only while it stays up, 30 s between jobs):
#   here, once:            bash scripts/gpu/stage_bundle.sh          (-> .stage/p0 .. .stage/pN)
#   job 0 (carry .stage/p0 .stage/evalspeed): bash scripts/gpu/round.sh bench && bash scripts/gpu/round.sh take p0
#                          (issue #19's benchmark runs in the background on the otherwise idle GPU while chunks arrive)
#   job k (carry .stage/pk): bash scripts/gpu/round.sh take pk
#   after the last chunk:  bash scripts/gpu/round.sh unpack; then, once the bench is done (`wait 0` shows it):
#                          bash scripts/gpu/round.sh instruments && bash scripts/gpu/round.sh start RECIPE...
#   then:                  bash scripts/gpu/round.sh wait 540        (prints progress; repeat until done)
#   finally:               COMMIT=<sha> bash scripts/gpu/round.sh collect   (-> $OUT)
# Safer (2026-12-03: two rounds were lost to gaps of more than 30 s between calls): carry the last chunk with
#   COMMIT=<sha> SCORER_ARGS=... bash scripts/gpu/round.sh take pN && bash scripts/gpu/round.sh launch RECIPE...
# then `COMMIT=<sha> bash scripts/gpu/round.sh step 540` back to back: every call returns what exists so far.
# `start` runs in its own session (setsid), so it outlives the job that started it:
#   1. the first recipe's data stage samples the base once (align/synthesis.py; a cache all recipes share);
#   2. then, in parallel: the base evaluation (once: every recipe has the same model and evals sections, checked),
#      and each recipe's data (cache hits) -> train -> merge;
#   3. each recipe's tuned evaluation as soon as its training and the base evaluation are done -> gate -> report.
set -euo pipefail
OUT=${OUT:-/tmp/out}
W=/tmp/round
mkdir -p "$OUT" "$W" /tmp/site /tmp/data /tmp/hgmodels /tmp/runs
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HARMGATE_DATA_MIRROR=/tmp/data HARMGATE_MODEL_DIR=/tmp/hgmodels OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1

bench() {  # issue #19: scripts/gpu/eval_speed.sh in its own session, results in $W/bench
  mkdir -p "$W/bench"
  OUT=$W/bench setsid nohup bash scripts/gpu/eval_speed.sh > "$W/bench.log" 2>&1 < /dev/null &
  sleep 1; echo "bench started"
}

instruments() {  # issue #13's instruments, trained here from the committed code (GPU budgets; docs/SCORERS.md)
  log "instruments: toxicity scorer"
  # shellcheck disable=SC2086  # extra arguments, split on purpose
  python3 -m harmgate scorer train --device cuda ${SCORER_ARGS:-} > "$W/scorer-train.log" 2>&1 \
    || { tail -20 "$W/scorer-train.log"; log "scorer train FAILED"; return 1; }
  tail -5 "$W/scorer-train.log"
  log "instruments: refusal judge"
  # shellcheck disable=SC2086
  python3 -m harmgate scorer validate-judge --device cuda ${JUDGE_ARGS:-} > "$W/judge-fit.log" 2>&1 \
    || { tail -20 "$W/judge-fit.log"; log "judge fit FAILED"; return 1; }
  tail -25 "$W/judge-fit.log"
  log "instruments ready"
}

take() { cat ".stage/$1/bundle.part" >> "$W/bundle.tar"; cp ".stage/$1/bundle.sha256" "$W/"; ls -la "$W"; }

unpack() {
  [ "$(sha256sum "$W/bundle.tar" | cut -d' ' -f1)" = "$(cat "$W/bundle.sha256")" ] || { echo "bundle: checksum mismatch"; exit 1; }
  tar xf "$W/bundle.tar" -C "$W"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$W"/wheels/*.whl 2>&1 | grep -v WARNING || true
  cp -r "$W/site/"* /tmp/site/
  [ -d "$W/models/harmgate" ] && cp -r "$W/models/harmgate" /tmp/hgmodels/
  tar xzf "$W/data.tgz" -C /tmp/data
  python3 -m harmgate models pull smollm2 --gguf "$W/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
  python3 - <<'PY' | tee "$W/versions.txt"
import torch, transformers, peft, trl, bitsandbytes, datasets, lm_eval, detoxify
print("gpu", torch.cuda.get_device_name(0), "torch", torch.__version__, "transformers", transformers.__version__,
      "peft", peft.__version__, "trl", trl.__version__, "bitsandbytes", bitsandbytes.__version__,
      "datasets", datasets.__version__, "lm_eval", lm_eval.__version__)
PY
  rm -f "$W/bundle.tar"
}

same_eval_setup() {  # base results may be shared only between runs with identical model and evals sections
  python3 - "$1" "$2" <<'PY'
import sys, yaml
a, b = (yaml.safe_load(open(f"{d}/config.yaml")) for d in sys.argv[1:])
for c in (a, b):  # where training starts does not change the base arm
    c["model"].pop("init_from", None)
sys.exit(0 if all(a[k] == b[k] for k in ("model", "evals")) else 1)
PY
}

log() { echo "[$(date -u +%T)] $*" | tee -a "$W/round.log"; }

init_from() {  # a recipe's model.init_from ("" if none)
  python3 -c "import sys; from harmgate.config import load_config; print(load_config(sys.argv[1]).model.init_from or '')" "$1"
}

recipe_job() {  # (wait for the run it starts from) -> data -> train -> (wait for base) -> tuned eval -> gate -> report
  local recipe=$1 run=/tmp/runs/$1 rc=0 init
  init=$(init_from "configs/recipes/$recipe.yaml") || { log "$recipe: config FAILED"; touch "$W/$recipe.failed"; return 3; }
  if [ -n "$init" ]; then  # e.g. contrast-sft-dpo starts from runs/contrast-sft: sample and train once it merged
    if [ ! -e "$init" ] && [ ! -L "$init" ]; then  # neither there nor a run of this round: nothing to wait for
      log "$recipe: $init is neither a finished run nor a recipe of this round"; touch "$W/$recipe.failed"; return 3
    fi
    log "$recipe: waiting for $init to merge"
    while [ ! -f "$init/model/harmgate_merge.json" ]; do
      [ -f "$W/$(basename "$init").failed" ] && { log "$recipe: $init failed"; touch "$W/$recipe.failed"; return 3; }
      sleep 10
    done
  fi
  if [ ! -f "$run/data/data_manifest.json" ]; then  # the first recipe's data stage ran in the sampling pass
    python3 -m harmgate data "configs/recipes/$recipe.yaml" --run-dir "$run" > "$W/$recipe.log" 2>&1 \
      || { log "$recipe: data FAILED"; touch "$W/$recipe.failed"; return 3; }
  fi
  python3 -m harmgate train "$run" >> "$W/$recipe.log" 2>&1 || { log "$recipe: train FAILED"; touch "$W/$recipe.failed"; return 3; }
  log "$recipe: trained"
  while [ ! -f "$W/base.done" ]; do sleep 5; done
  [ -f "$W/base.ok" ] || { log "$recipe: base evaluation failed"; return 3; }
  same_eval_setup "$W/base-run" "$run" || { log "$recipe: evals differ from the base run's"; return 3; }
  mkdir -p "$run/evals" && cp -r "$W/base-run/evals/base" "$run/evals/base"
  echo "base evals reused from the base run of this round (identical model and evals config)" > "$run/evals/base.reused-from.txt"
  python3 -m harmgate eval "$run" --arm tuned >> "$W/$recipe.log" 2>&1 || { log "$recipe: eval FAILED"; return 3; }
  python3 -m harmgate gate "$run" >> "$W/$recipe.log" 2>&1 || rc=$?
  python3 -m harmgate report "$run" >> "$W/$recipe.log" 2>&1 || true
  log "$recipe: gate exit $rc"
}

background() {  # the first recipe must not start from another one (it samples for all before any trains)
  local first=$1 recipe
  log "round start: recipes $*"
  mkdir -p runs  # runs/NAME -> /tmp/runs/NAME, so a recipe's model.init_from: runs/NAME finds this round's run
  for recipe in "$@"; do ln -sfn "/tmp/runs/$recipe" "runs/$recipe"; done
  python3 -m harmgate data "configs/recipes/$first.yaml" --run-dir "/tmp/runs/$first" > "$W/synthesis.log" 2>&1 \
    || { log "synthesis FAILED"; touch "$W/base.done" "$W/all.done"; return 1; }
  log "synthesis done: $(wc -l < runs/synthesis-cache.jsonl) prompts sampled"
  ( mkdir -p "$W/base-run" && cp "/tmp/runs/$first/config.yaml" "$W/base-run/" && mkdir -p "$W/base-run/data" \
      && cp -r "/tmp/runs/$first/data/data_manifest.json" "/tmp/runs/$first/data/train.jsonl" "$W/base-run/data/" \
      && python3 -m harmgate eval "$W/base-run" --arm base > "$W/base.log" 2>&1 && touch "$W/base.ok"
    log "base evaluation done (ok: $([ -f "$W/base.ok" ] && echo yes || echo no))"; touch "$W/base.done" ) &
  for recipe in "$@"; do recipe_job "$recipe" & done
  # Extra GPU work that shares the card with the recipes: EXTRA_JOBS, one command line per line.
  local job i=0
  while IFS= read -r job; do
    [ -n "${job// /}" ] || continue
    i=$((i + 1))
    ( mkdir -p "$W/extra$i" && OUT=$W/extra$i bash -c "$job" > "$W/extra$i.log" 2>&1; log "extra $i ($job) exit $?" ) &
  done <<< "${EXTRA_JOBS:-}"
  wait
  log "round done"; touch "$W/all.done"
}

start() { setsid nohup bash "$0" background "$@" > "$W/background.log" 2>&1 < /dev/null & sleep 2; cat "$W/round.log"; }

wait_for() {  # poll up to $1 seconds
  local until=$(( $(date +%s) + $1 ))
  while [ ! -f "$W/all.done" ] && [ "$(date +%s)" -lt "$until" ]; do sleep 10; done
  cat "$W/round.log"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
  for f in "$W"/*.log; do echo "--- $f"; tail -n 3 "$f"; done
}

collect() {
  cp "$W/round.log" "$W/versions.txt" "$OUT/" 2>/dev/null || true
  echo "commit ${COMMIT:-unknown}" >> "$OUT/versions.txt"
  tar czf "$OUT/logs.tgz" -C "$W" --exclude=bundle.tar --exclude=wheels --exclude=gguf --exclude=models --exclude=site \
    --exclude=data.tgz --exclude=base-run --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.bin' . 2>/dev/null || true
  for run in /tmp/runs/*/; do
    local name; name=$(basename "$run")
    tar czf "$OUT/run-$name.tgz" -C /tmp/runs --exclude=model --exclude=adapter --exclude=checkpoints \
      --exclude=train.jsonl "$name"
  done
  [ -f runs/synthesis-cache.jsonl ] && gzip -c runs/synthesis-cache.jsonl > "$OUT/synthesis-cache.jsonl.gz"
  if [ -n "${ADAPTER:-}" ] && [ -d "/tmp/runs/$ADAPTER/train/adapter" ]; then  # 16 MiB a file: split in two
    tar czf "$W/adapter.tgz" -C "/tmp/runs/$ADAPTER/train" adapter
    split -b 15M -d -a 1 "$W/adapter.tgz" "$OUT/adapter-$ADAPTER.tgz.part"
  fi
  ls -la "$OUT"
}

case "${1:-}" in
  bench) bench ;;
  instruments) instruments ;;
  take) take "$2" ;;
  unpack) unpack ;;
  start) shift; start "$@" ;;
  background) shift; background "$@" ;;
  wait) wait_for "${2:-540}" ;;
  collect) collect ;;
  # One device call per step, so the machine never sits idle between `start`, the waits and the collects (it is
  # given back after 30 s without a call, and the round with it): `launch` = unpack + instruments + start + step;
  # `step S` = wait up to S seconds, then collect whatever exists so far into $OUT.
  launch) shift; unpack && instruments && start "$@" && wait_for "${STEP_SECONDS:-300}" && collect ;;
  step) wait_for "${2:-540}"; collect ;;
  *) echo "usage: $0 take pK | unpack | start RECIPE... | launch RECIPE... | wait SECONDS | step SECONDS | collect" >&2
     exit 2 ;;
esac
