#!/usr/bin/env bash
# Issue #19 on the GPU image, one command: evaluation generation on the Llama-3.1-8B shape (random bf16 weights
# built on the GPU, nothing downloaded): today's model.generate path and the static-cache path (evals/fastgen.py)
# in the same run, greedy agreement, k-sample RTP-style sampling, log-likelihood scoring, the bandwidth roof line
# and a full production-eval estimate (bench/eval_throughput.py).
#
# Staging, here: bash scripts/gpu/stage_eval_speed.sh          (.stage/evalspeed: pydantic wheels, ~3 MiB)
# Then one device call carrying .stage/evalspeed:
#   bash scripts/gpu/eval_speed.sh [extra bench arguments]
# Writes under $OUT: eval_throughput.json (rewritten after every phase), eval_throughput.log, versions.txt,
# nvidia-smi.txt. The bench gets what is left of CALL_BUDGET seconds (default 450: the whole call stays under
# 8 minutes); a phase that would not fit is skipped and says so in the JSON.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
SECONDS=0
if ! python3 -c "import pydantic" 2>/dev/null; then
  if ls .stage/evalspeed/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .stage/evalspeed/*.whl 2>&1 | tail -2
  else
    echo "pydantic is missing and .stage/evalspeed was not carried: run scripts/gpu/stage_eval_speed.sh here first" >&2
    exit 2
  fi
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5  # progress bars: a line every 5 s in the log
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}  # a warm machine reuses kernels
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import torch, transformers, pydantic
print("gpus", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], "torch", torch.__version__,
      "transformers", transformers.__version__, "pydantic", pydantic.__version__)
PY
budget=$(( ${CALL_BUDGET:-450} - SECONDS ))
echo "bench time budget ${budget} s"
# Progress bars go to the log only (tqdm redraws); the phase lines go to both.
python3 bench/eval_throughput.py --shape llama-3.1-8b --out "$OUT/eval_throughput.json" --time-budget "$budget" "$@" \
  2>&1 | tee "$OUT/eval_throughput.log" | grep -v "it/s\]\|prompt/s\]\|row/s\]\|seq/s\]"
rc=${PIPESTATUS[0]}
echo "bench exit $rc after ${SECONDS} s"
python3 - "$OUT/eval_throughput.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
p, s = d.get("phases", {}), d.get("summary", {})
for name in ("hf", "static_eager", "static_compiled", "static_compiled_batch_x2", "static_compiled_sdpa"):
    if name in p:
        print(f"{name:25s} {p[name].get('new_tokens_per_s')} new tokens/s, {p[name].get('prompts_per_s')} prompts/s")
print("speed-up", s.get("speedup_new_tokens_per_s"), "bandwidth", json.dumps(s.get("bandwidth")))
print("production estimate", json.dumps((s.get("production_estimate") or {}).get("new_total_minutes")),
      "min (today:", json.dumps((s.get("production_estimate") or {}).get("today_total_minutes")), "min)")
print("errors", json.dumps(d.get("errors")))
PY
exit "$rc"
