"""Wall time of the capability suite per lm-eval task: what a CPU (or GPU) evaluation costs, and what the full
tasks would cost at the measured rate.

    .venv/bin/python bench/capability_cost.py                       # SmolLM2-135M-Instruct, 20 documents a task
    .venv/bin/python bench/capability_cost.py --per-task 40 --batch-size 16 --out bench/results/capability_cost_cpu.json
    .venv/bin/python bench/capability_cost.py --per-task 0           # full tasks (the GPU setting)

Each task runs alone through the suite's own code path (evals.suites.capability: lm-eval's task, HFLM on the
loaded model), so the seconds include lm-eval's request building and scoring, not only the forward passes.
``full_s_est`` extrapolates linearly from the documents measured to the whole task.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="hub id or local folder")
    parser.add_argument("--per-task", type=int, default=20, help="documents per task (0: every document)")
    parser.add_argument("--tasks", nargs="*", default=None, help="default: every task of the suite")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from align.models import load_causal_lm, load_tokenizer
    from evals.runner import run_suite
    from evals.suites.capability import TASKS
    from harmgate.config import SuiteConfig, parse_config

    on_gpu = torch.cuda.is_available()
    model = load_causal_lm(args.model, dtype="bfloat16" if on_gpu else "float32",
                           device_map={"": 0} if on_gpu else None)
    model.eval()
    tokenizer = load_tokenizer(args.model)
    config = parse_config({"name": "bench", "model": {"base": args.model},
                           "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
                           "evals": {"generation": {"batch_size": args.batch_size}, "suites": [{"name": "capability"}]},
                           "policy": {"kpis": [{"name": "k", "metric": "capability.mean_normalised", "direction": "higher", "min": 0}]}})
    rows = []
    for name in args.tasks or list(TASKS):
        cfg = SuiteConfig(name="capability", seed=args.seed,
                          options={"tasks": [name], "per_task_limit": args.per_task or None, "bootstrap_iters": 0})
        started = time.perf_counter()
        result, _ = run_suite(model, tokenizer, cfg, config)
        seconds = time.perf_counter() - started
        src = result.info["sources"][0]
        head = TASKS[name].headline
        rows.append({"task": name, "docs": src["used"], "docs_full": src["items"], "seconds": round(seconds, 2),
                     "s_per_doc": round(seconds / src["used"], 4),
                     "full_s_est": round(seconds / src["used"] * src["items"], 1),
                     head: result.metrics[f"{name}/{head}"]["value"],
                     "metrics": {m: v["value"] for m, v in result.metrics.items() if m.startswith(f"{name}/")}})

    table = Table(title=f"capability suite cost: {args.model} on {'GPU' if on_gpu else 'CPU'}")
    for col in ("task", "docs", "seconds", "s/doc", "full task (est.)"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in rows:
        table.add_row(r["task"], f"{r['docs']}/{r['docs_full']}", f"{r['seconds']:.1f}", f"{r['s_per_doc']:.3f}",
                      f"{r['full_s_est'] / 60:.1f} min")
    total, full = sum(r["seconds"] for r in rows), sum(r["full_s_est"] for r in rows)
    table.add_row("total", "", f"{total:.1f}", "", f"{full / 60:.1f} min")
    Console().print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "model": args.model, "device": torch.cuda.get_device_name(0) if on_gpu else platform.processor() or "cpu",
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "batch_size": args.batch_size, "per_task": args.per_task, "seed": args.seed, "tasks": rows,
            "total_seconds": round(total, 1), "full_seconds_est": round(full, 1)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
