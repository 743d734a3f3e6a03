#!/usr/bin/env bash
# Stage what the GPU image lacks for bench/eval_throughput.py (scripts/gpu/eval_speed.sh) into .stage/evalspeed
# (git-ignored): pydantic and its small dependencies (harmgate.config), as Python 3.12 manylinux wheels. Torch,
# transformers, tokenizers, numpy, tqdm and pyyaml are on the image. About 3 MiB: one device call carries it.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .stage/evalspeed && mkdir -p .stage/evalspeed
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d .stage/evalspeed pydantic pydantic-core annotated-types \
  typing-inspection typing-extensions
du -sh .stage/evalspeed
