"""Count what a full production evaluation asks of the model: per suite, generation rows and new tokens, and
log-likelihood tokens, for configs/llama31-8b.yaml's suites at full size with the local data mirror.

    HARMGATE_DATA_MIRROR=../shared/data .venv/bin/python bench/eval_workload.py \
        --out bench/results/eval_workload_production.json

bench/eval_throughput.py turns this into a wall-time estimate with the rates it measures on the GPU (where the data
is not). Token counts are characters / 4 (English text with Llama 3's tokenizer: about 4.2 characters a token)
plus 30 tokens of chat template per chat-rendered prompt: an estimate, good to tens of percent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHARS_PER_TOKEN = 4.0
CHAT_TEMPLATE_TOKENS = 30


def tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


def suite_workload(name: str, cfg, mirror: str | None, gen_default, prompted: bool) -> dict:
    from evals.suites import get_suite

    suite = get_suite(name)
    items = suite.load(cfg, mirror).items
    gen = suite.generation_config(gen_default, cfg)
    chat = suite.applies_system_prompt(cfg)
    arms = 3 if (chat and prompted and suite.kind != "lm-eval") else 2
    w = {"kind": suite.kind, "items": len(items), "arms": arms, "k": cfg.k, "chat": chat}
    extra = CHAT_TEMPLATE_TOKENS if chat else 0
    if suite.kind == "generation":
        w |= {"generation_rows": len(items) * cfg.k, "max_new_tokens": gen.max_new_tokens,
              "prompt_tokens": sum(tokens(it.prompt) + extra for it in items)}
    elif name == "helpfulness":
        gen_items = [it for it in items if it.meta.get("task") == "generation"]
        ppl = [it for it in items if it.meta.get("task") == "perplexity"]
        w |= {"generation_rows": len(gen_items), "max_new_tokens": gen.max_new_tokens,
              "loglik_tokens": sum(tokens(" ".join(m["content"] for m in it.meta["context"]) + it.meta["answer"])
                                   + extra for it in ppl)}
    elif name == "hh_preference":
        ctx = [tokens(" ".join(m["content"] for m in it.meta["context"])) + extra for it in items]
        replies = [tokens(it.meta["chosen"]) + tokens(it.meta["rejected"]) for it in items]
        w |= {"loglik_tokens": sum(2 * c + r for c, r in zip(ctx, replies)),
              "loglik_tokens_shared": sum(c + r for c, r in zip(ctx, replies))}  # one context for both replies
    else:  # lm-eval multiple choice: one request per choice, each context + a short answer
        choices = {"bias_bbq": 3, "bias_crows_pairs": 2, "bias_winobias": 2}.get(name, 2)
        # BBQ: one question, three short answers; CrowS-Pairs scores two whole sentences after an empty context
        # and WinoBias is counted unshared too (conservative)
        full = sum(choices * (tokens(it.prompt) + 4) for it in items)
        w |= {"loglik_tokens": full, "choices": choices,
              "loglik_tokens_shared": sum(tokens(it.prompt) + 4 * choices for it in items)
              if name == "bias_bbq" else full}
    return w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/llama31-8b.yaml")
    parser.add_argument("--out", default="bench/results/eval_workload_production.json")
    args = parser.parse_args(argv)

    from evals.fastgen import prompt_bucket
    from harmgate.config import load_config

    config = load_config(args.config)
    mirror = config.data.mirror or os.environ.get("HARMGATE_DATA_MIRROR")
    prompted = True  # the production policy's beats_arm KPIs need the prompted arm (docs/POLICY.md)
    suites = {}
    for s in config.evals.suites:
        suites[s.name] = suite_workload(s.name, s, mirror, config.evals.generation, prompted)
        print(s.name, suites[s.name], flush=True)
    # distinct (prompt bucket, max_new_tokens) shapes the static path compiles: one per suite's tokens setting and
    # prompt bucket of its median prompt, at least (long tails add a few more)
    shapes = {(w["max_new_tokens"], prompt_bucket(w.get("prompt_tokens", 0) // max(1, w["items"])))
              for w in suites.values() if w.get("generation_rows")}
    total_gen = sum(w.get("generation_rows", 0) * w.get("max_new_tokens", 0) * w["arms"] for w in suites.values())
    total_ll = sum(w.get("loglik_tokens", 0) * w["arms"] for w in suites.values())
    total_ll_shared = sum(w.get("loglik_tokens_shared", w.get("loglik_tokens", 0)) * w["arms"] for w in suites.values())
    out = {"config": args.config, "chars_per_token": CHARS_PER_TOKEN, "suites": suites,
           "generation_shapes": len(shapes) + 2, "max_new_tokens_all_arms": total_gen, "loglik_tokens_all_arms": total_ll,
           "loglik_tokens_shared_all_arms": total_ll_shared}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"generation: up to {total_gen:,} new tokens; log-likelihood: {total_ll:,} tokens, {total_ll_shared:,} "
          f"with shared contexts (all arms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
