"""Prompts per second of evaluation generation: batched (left padding) vs one prompt at a time.

    .venv/bin/python bench/eval_throughput.py                      # SmolLM2-135M-Instruct, 32 AdvBench prompts
    .venv/bin/python bench/eval_throughput.py --model PATH --prompts 64 --batch-size 32 --max-new-tokens 64
    .venv/bin/python bench/eval_throughput.py --threads 1   # a shared, busy CPU

Both modes run evals.generate.generate (the code the suites use) on the same prompts with greedy decoding;
the table also says how many replies came out identical, since batching with padding may change float
rounding and, rarely, a greedy choice.
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="hub id or local folder")
    parser.add_argument("--suite", default="advbench_refusal", help="registered suite whose prompts to use")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's). On a shared, busy CPU, 1 avoids threads "
                             "spinning while waiting for each other")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from align.models import load_causal_lm, load_tokenizer
    from evals.generate import generate
    from evals.suites import get_suite
    from harmgate.config import GenerationConfig, SuiteConfig

    console = Console()
    on_gpu = torch.cuda.is_available()
    model = load_causal_lm(args.model, dtype="bfloat16" if on_gpu else "float32",
                           device_map={"": 0} if on_gpu else None).eval()
    tokenizer = load_tokenizer(args.model)
    items = get_suite(args.suite).load(SuiteConfig(name=args.suite, limit=args.prompts, seed=args.seed),
                                       os.environ.get("HARMGATE_DATA_MIRROR")).items
    prompts = [it.prompt for it in items]
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    console.print(f"model {args.model} on {device}; {len(prompts)} {args.suite} prompts, greedy, "
                  f"max_new_tokens={args.max_new_tokens}")

    generate(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2), desc="warm-up")
    runs = {}
    for label, batch in ((f"batched ({args.batch_size})", args.batch_size), ("one at a time", 1)):
        gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=batch)
        start = time.perf_counter()
        outputs = [o[0] for o in generate(model, tokenizer, prompts, gen, desc=label)]
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
        runs[label] = (batch, seconds, tokens, outputs)

    table = Table(title="evaluation generation throughput")
    for col in ("mode", "batch", "prompts", "seconds", "prompts/s", "new tokens/s"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for label, (batch, seconds, tokens, _) in runs.items():
        table.add_row(label, str(batch), str(len(prompts)), f"{seconds:.1f}", f"{len(prompts) / seconds:.2f}",
                      f"{tokens / seconds:.1f}")
    console.print(table)
    (_, t_batched, _, out_b), (_, t_single, _, out_s) = runs.values()
    same = sum(a == b for a, b in zip(out_b, out_s))
    console.print(f"speed-up {t_single / t_batched:.2f}x; identical replies {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
