#!/usr/bin/env python3
"""Build the offline hub cache for configs/llama31-8b.yaml (harmgate.hubcache): tiny stand-ins for every model,
dataset and Detoxify checkpoint the production config fetches by name, in the Hugging Face hub / datasets / torch
hub caches' own layouts, so the connected path can be run with HF_HUB_OFFLINE=1 (docs/CONNECTED.md).

    python scripts/hub_cache.py OUT --mirror ../shared/data [--rows 24]
    eval "$(python scripts/hub_cache.py OUT --print-env)"     # HF_HOME, TORCH_HOME, HF_HUB_OFFLINE=1, ...
    harmgate run configs/llama31-8b.yaml                        # (on a GPU; tests/test_connected_path.py on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from harmgate.hubcache import HubCache  # noqa: E402
from harmgate.standins import build_production_cache  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="cache root (hf/ = HF_HOME, torch/ = TORCH_HOME)")
    parser.add_argument("--mirror", type=Path, default=os.environ.get("HARMGATE_DATA_MIRROR"),
                        help="data mirror the dataset rows come from (default: $HARMGATE_DATA_MIRROR)")
    parser.add_argument("--rows", type=int, default=24, help="rows per dataset (per file where a repo has several)")
    parser.add_argument("--print-env", action="store_true", help="print the environment for OUT and exit")
    args = parser.parse_args(argv)
    if args.print_env:
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in HubCache(args.out).env().items()))
        return 0
    if args.mirror is None or not args.mirror.is_dir():
        parser.error(f"--mirror {args.mirror}: not a folder (the dataset rows come from the data mirror)")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; remove it or pick another folder")
    cache = build_production_cache(args.out, args.mirror, rows=args.rows)
    for entry in cache.written:
        size = sum(entry["files"].values()) if "files" in entry else entry.get("bytes", 0)
        print(f"{entry['kind']:9} {entry['id']}  ({size:,} bytes)")
    print(json.dumps(cache.env()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
