#!/usr/bin/env bash
# Stage what harmgate itself needs on the GPU image beyond ../shared/tools/gpu-stage.sh, into .stage/d
# (git-ignored): its pure-Python dependencies as Python 3.12 wheels, and the data files the demo configs read.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DATA=${HARMGATE_DATA_MIRROR:-../shared/data}
mkdir -p .stage/d && rm -f .stage/d/*
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d .stage/d typer click shellingham rich markdown-it-py mdurl \
  pygments pydantic pydantic-core annotated-types typing-inspection typing-extensions pyyaml tqdm xxhash \
  fsspec==2026.9.0 jinja2 markupsafe
tar czf .stage/d/data.tgz -C "$DATA" hh-rlhf safety-tuned-llamas/data/training instructions/alpaca advbench xstest
du -sh .stage/d
