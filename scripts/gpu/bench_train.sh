#!/usr/bin/env bash
# Issue #8 on the GPU image: training throughput (bench/train_throughput.py) and loss curves (bench/loss_curves.py).
#
# Staging, here: bash ../shared/tools/gpu-stage.sh (for .stage/c: bitsandbytes); bash scripts/gpu/stage_bench.sh
# Then one device call per mode, each carrying .stage/c .stage/bench (about 52 MiB), back to back so the machine
# stays warm (the random 8B model, built by the first call into /tmp/hgbench, is reused while it stays up):
#   bash scripts/gpu/bench_train.sh                 # configs 1, 2, 3 on the Llama-3.1-8B shape (about 6-7 min)
#   bash scripts/gpu/bench_train.sh ablation        # harmgate's path with one lever changed at a time
#   bash scripts/gpu/bench_train.sh eval-gen        # batched vs one-at-a-time generation, 8B shape, bf16
#   bash scripts/gpu/bench_train.sh ddp             # 1 vs 2 GPUs (accelerate, DDP): needs an nvidia-h100-x2 call
#   bash scripts/gpu/bench_train.sh loss [MODEL]    # packed vs unpacked loss curves on HH data; MODEL defaults to
#                                                   # SmolLM2 from /tmp/models (gpu-stage.sh's jobs a and b first)
# Extra arguments go to the Python script (e.g. --steps 4 --batch-sizes 8,16 --configs harmgate).
# Writes under $OUT: train_throughput*.json + .log (or loss_curves.json/.png/.log), versions.txt.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mode=${1:-compare}; [ $# -gt 0 ] && shift
mkdir -p "$OUT" /tmp/site /tmp/hgbench
if [ ! -f /tmp/site/.hg-bench-installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .stage/c/*.whl .stage/bench/*.whl \
    2>&1 | tail -2
  touch /tmp/site/.hg-bench-installed
fi
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
python3 - <<'PY' | tee "$OUT/versions.txt"
import torch, transformers, peft, trl, bitsandbytes, accelerate
try:
    import liger_kernel, importlib.metadata as md; liger = md.version("liger-kernel")
except Exception as err:  # noqa: BLE001
    liger = f"missing ({err})"
print("gpus", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], "torch", torch.__version__,
      "transformers", transformers.__version__, "peft", peft.__version__, "trl", trl.__version__,
      "bitsandbytes", bitsandbytes.__version__, "accelerate", accelerate.__version__, "liger-kernel", liger)
PY
model=(); [ -f /tmp/hgbench/random-llama-3.1-8b/config.json ] && model=(--model-dir /tmp/hgbench/random-llama-3.1-8b)
# The whole call must end within the device's 10 minutes: the bench gets what is left of CALL_BUDGET seconds
# (a later --time-budget in "$@" overrides).
bench() { python3 bench/train_throughput.py --work-dir /tmp/hgbench --time-budget $(( ${CALL_BUDGET:-585} - SECONDS )) \
  "${model[@]}" "$@"; }
case "$mode" in
  compare)  bench --out "$OUT/train_throughput.json" "$@" ;;
  ablation) bench --mode ablation --out "$OUT/train_throughput_ablation.json" "$@" ;;
  eval-gen) bench --mode eval-gen --out "$OUT/train_throughput_evalgen.json" "$@" ;;
  ddp)      bench --mode ddp --gpus "$(python3 -c 'import torch; print(torch.cuda.device_count())')" \
              --out "$OUT/train_throughput_ddp.json" "$@" ;;
  loss)
    mkdir -p /tmp/data && tar xzf .stage/bench/hh.tgz -C /tmp/data
    base=${1:-}; [ $# -gt 0 ] && shift
    if [ -z "$base" ]; then
      export HARMGATE_MODEL_DIR=/tmp/hgmodels
      python3 -m harmgate models pull smollm2 --gguf /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
      base=HuggingFaceTB/SmolLM2-135M-Instruct
    fi
    HARMGATE_DATA_MIRROR=/tmp/data python3 bench/loss_curves.py --model "$base" --out "$OUT/loss_curves.json" "$@" \
      2>&1 | tee "$OUT/loss_curves.log" | grep -v "it/s\]" ;;
  *) echo "unknown mode $mode (compare|ablation|eval-gen|ddp|loss)" >&2; exit 2 ;;
esac
