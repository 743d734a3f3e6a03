"""Padding in the BERT fine-tuning loop (evals/scorers/finetune.py) on the toxicity scorer's real training set (the
corpus `harmgate scorer train` builds at ``--scale``): each random batch as one padded batch (``length_chunks``
1) against the same batch run as length-sorted chunks whose gradients add up to it (``--chunks``).

    HARMGATE_DATA_MIRROR=../shared/data python bench/finetune_batches.py --steps 40 --repeats 2 \
        --out bench/results/finetune-batches-cpu.json

Each configuration trains a fresh model for ``--steps`` steps (the real settings of the default scorer otherwise)
and reports seconds per step inside the training loop (tokenizer and model loading excluded), real tokens and
padded tokens. Runs alternate between the settings so that a change in the
machine's load hits all of them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from evals.scorers.train import TrainSettings, fit, load_corpus  # noqa: E402


def one_run(train, settings: TrainSettings, steps: int) -> dict:
    stats = fit(train, replace(settings, max_steps=steps), device="cpu", progress=False, log=lambda _m: None).stats
    return {"steps": stats["steps"], "seconds": stats["loop_seconds"], "tokens": stats["tokens_seen"],
            "padded_tokens": stats["padded_tokens"], "seconds_per_step": stats["loop_seconds"] / stats["steps"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8], help="length_chunks settings beside 1")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    base = TrainSettings(output=Path("unused"), scale=args.scale, device="cpu")
    _, corpus = load_corpus(base)
    settings = [1] + [c for c in args.chunks if c != 1]
    runs: dict[int, list[dict]] = {c: [] for c in settings}
    for _ in range(args.repeats):
        for chunks in settings:
            r = one_run(corpus.train, replace(base, length_chunks=chunks), args.steps)
            runs[chunks].append(r)
            print(f"  length_chunks {chunks}: {r['steps']} steps, {r['seconds']:.1f} s, {r['seconds_per_step']:.3f} "
                  f"s/step, padded/real tokens {r['padded_tokens'] / r['tokens']:.2f}", flush=True)
    rows = []
    for chunks in settings:
        rs = runs[chunks]
        rows.append({"length_chunks": chunks, "steps": args.steps,
                     "seconds_per_step_median": round(statistics.median(r["seconds_per_step"] for r in rs), 3),
                     "padded_over_real_tokens": round(rs[0]["padded_tokens"] / rs[0]["tokens"], 3),
                     "real_tokens": rs[0]["tokens"], "padded_tokens": rs[0]["padded_tokens"], "runs": rs})
    one = rows[0]["seconds_per_step_median"]
    for row in rows:
        row["speedup"] = round(one / row["seconds_per_step_median"], 3)
    print(f"\n| length_chunks | s/step (median of {args.repeats}) | padded / real tokens | speed-up |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['length_chunks']} | {row['seconds_per_step_median']:.3f} | {row['padded_over_real_tokens']:.2f} "
              f"| {row['speedup']:.2f}x |")
    print(f"\n{len(corpus.train)} examples, batch {base.batch_size}, max_length {base.max_length}, "
          f"{args.threads} thread(s), {args.steps} steps a run")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "bench": "finetune_batches", "examples": len(corpus.train), "scale": args.scale,
            "batch_size": base.batch_size, "max_length": base.max_length, "threads": args.threads,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
