"""SmolLM2-135M-Instruct's capability numbers beside its model card's: the Markdown table of docs/RESULTS.md.

    .venv/bin/python bench/capability_vs_card.py runs/smollm2-capability-cpu/evals/base/capability.json
    .venv/bin/python bench/capability_vs_card.py CPU.json --gpu capability-full.json   # + the GPU full run

Inputs are the capability suite's result files (evals/<arm>/capability.json, or scripts/gpu/capability.sh's
capability-full.json). Reference columns, copied by hand from their sources:

- CARD: HuggingFaceTB/SmolLM2-135M-Instruct model card, "Instruction model" table (lighteval, zero-shot unless
  stated; "ARC (Average)" is the mean of ARC-Easy and ARC-Challenge; "MMLU (cloze)" scores the answer text).
- LM_EVAL_0SHOT: the "Baseline" column (= SmolLM2-135M-Instruct) of lldois/SmolLM2-135M-Reasoning-SLERP-Champion's
  card, "Benchmark Results (lm-eval, 0-shot)": a third party's lm-evaluation-harness run, our harness.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CARD = {"hellaswag": 40.9, "arc_average": 37.3, "piqa": 66.3, "mmlu": 29.3}
LM_EVAL_0SHOT = {"arc_challenge/acc_norm": 27.73, "arc_easy/acc": 54.12, "hellaswag/acc_norm": 42.99,
                 "piqa/acc_norm": 66.92}
# (row label, our metric(s), card key): a card row averaging two of ours lists both
ROWS = [
    ("HellaSwag", ["hellaswag/acc_norm"], "hellaswag"),
    ("ARC (Average) = mean(ARC-E, ARC-C) acc_norm", ["arc_easy/acc_norm", "arc_challenge/acc_norm"], "arc_average"),
    ("ARC-Easy acc_norm", ["arc_easy/acc_norm"], None),
    ("ARC-Easy acc", ["arc_easy/acc"], None),
    ("ARC-Challenge acc_norm", ["arc_challenge/acc_norm"], None),
    ("PIQA", ["piqa/acc_norm"], "piqa"),
    ("MMLU (lm-eval: letter answer; card: cloze)", ["mmlu/acc"], "mmlu"),
    ("WinoGrande", ["winogrande/acc"], None),
    ("OpenBookQA acc_norm", ["openbookqa/acc_norm"], None),
    ("SciQ acc_norm", ["sciq/acc_norm"], None),
    ("BoolQ", ["boolq/acc"], None),
    ("LAMBADA (OpenAI) acc", ["lambada_openai/acc"], None),
    ("TruthfulQA MC1", ["truthfulqa_mc1/acc"], None),
    ("TruthfulQA MC2", ["truthfulqa_mc2/acc"], None),
    ("capability mean (chance-corrected)", ["mean_normalised"], None),
]


def _cell(metrics: dict[str, Any] | None, names: list[str]) -> str:
    if not metrics or any(n not in metrics or metrics[n].get("value") is None for n in names):
        return "—"
    values = [metrics[n]["value"] for n in names]
    value = 100 * sum(values) / len(values)
    if len(names) == 1 and metrics[names[0]].get("ci95"):
        lo, hi = metrics[names[0]]["ci95"]
        return f"{value:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{value:.1f}"


def table(cpu: dict[str, Any], gpu: dict[str, Any] | None) -> str:
    n_cpu = (cpu.get("info") or {}).get("per_task_limit")
    lines = [f"| task (lm-eval metric) | harmgate CPU, {n_cpu or 'all'} docs/task [95% CI] | harmgate GPU, all docs "
             f"[95% CI] | model card (lighteval) | third-party lm-eval 0-shot |",
             "|---|---|---|---|---|"]
    for label, names, card_key in ROWS:
        card = f"{CARD[card_key]:.1f}" if card_key else "—"
        third = f"{LM_EVAL_0SHOT[names[0]]:.1f}" if len(names) == 1 and names[0] in LM_EVAL_0SHOT else "—"
        lines.append(f"| {label} | {_cell(cpu['metrics'], names)} | "
                     f"{_cell(gpu['metrics'], names) if gpu else 'pending'} | {card} | {third} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cpu", type=Path, help="capability.json of the CPU run")
    parser.add_argument("--gpu", type=Path, default=None, help="capability-full.json of the GPU run")
    args = parser.parse_args()
    cpu = json.loads(args.cpu.read_text(encoding="utf-8"))
    gpu = json.loads(args.gpu.read_text(encoding="utf-8")) if args.gpu else None
    print(table(cpu, gpu), end="")


if __name__ == "__main__":
    main()
