#!/usr/bin/env bash
# Stage what the GPU image lacks for bench/train_throughput.py and bench/loss_curves.py into .stage/bench (git-ignored):
# liger-kernel (its own needs, torch and triton, are on the image), TRL + datasets and their small dependencies,
# and harmgate's pure-Python dependencies, as Python 3.12 wheels. bitsandbytes stays in .stage/c
# (../shared/tools/gpu-stage.sh). One GPU job carries .stage/c + .stage/bench (about 60 MiB with the working tree).
# HH data for the loss curves goes in .stage/bench/hh.tgz (one file of the mirror).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DATA=${HARMGATE_DATA_MIRROR:-../shared/data}
rm -rf .stage/bench && mkdir -p .stage/bench  # this folder only: .stage/e belongs to scripts/gpu/stage_recipes.sh
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d .stage/bench liger-kernel==0.8.5 trl==1.16.0 datasets==5.2.0 \
  dill==0.4.1 multiprocess==0.70.19 xxhash fsspec==2026.9.0 typer click shellingham rich markdown-it-py mdurl \
  pygments pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml tqdm
[ -d .stage/c ] && ls .stage/c/bitsandbytes-*.whl >/dev/null 2>&1 || \
  python3 -m pip download -q --no-deps "${plat[@]}" --platform manylinux_2_24_x86_64 -d .stage/c bitsandbytes==0.50.2
tar czf .stage/bench/hh.tgz -C "$DATA" hh-rlhf
du -sh .stage/c .stage/bench
du -cb .stage/c .stage/bench | tail -1 | awk '{printf "carry: %.1f MiB of 64 (plus the working tree)\n", $1/1048576}'
