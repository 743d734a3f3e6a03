"""Does packing change what is learnt? Loss curves of `harmgate train`'s path, packed vs unpacked, on real data.

    python bench/loss_curves.py --model HuggingFaceTB/SmolLM2-135M-Instruct          # GPU (HARMGATE_DATA_MIRROR)
    python bench/loss_curves.py --model harmgate/tiny-random-llama --max-steps 6     # CPU smoke run

The same examples (HH-RLHF harmless-base chosen replies, through align.mixture), the same seed and LoRA init,
the same tokens per optimizer step (unpacked: --batch samples; packed: --packed-batch rows of --max-length), the
same QLoRA setup; only training.packing differs. A third run, unpacked with another seed, measures the noise the
difference should be compared with. Every run is scored at the end on the same held-out examples, one at a time,
unpacked (completion tokens only). Writes JSON (curves against real tokens seen, held-out losses) and a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _config(args, packing: str, batch: int, seed: int, on_gpu: bool, max_steps: int):
    from harmgate.config import parse_config

    return parse_config({
        "name": "loss-curves", "model": {"base": args.model},
        "quantization": {"load_in_4bit": True, "compute_dtype": "bfloat16" if on_gpu else "float32"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"max_steps": max_steps, "per_device_batch_size": batch, "max_seq_length": args.max_length,
                     "learning_rate": args.lr, "warmup_steps": 0, "lr_scheduler": "constant",
                     "gradient_checkpointing": on_gpu, "logging_steps": 1, "save_steps": 100_000, "seed": seed,
                     "packing": packing, "use_liger_kernel": args.liger and on_gpu},
        "data": {"sources": [{"id": "Anthropic/hh-rlhf", "data_dir": "harmless-base", "split": "test",
                              "format": "hh", "field": "chosen"}], "max_examples": args.examples, "seed": 1234},
        "evals": {"suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "k", "metric": "a.b", "direction": "lower", "max": 1}]},
    })


def heldout_loss(model, tokenizer, examples: list[dict[str, Any]], max_length: int) -> dict[str, float]:
    """Token-mean NLL of the completions, each example alone (prompt rendered with the generation prompt, as
    TRL's prompt/completion tokenization does)."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ex in examples:
            prompt = tokenizer.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=True)
            full = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True)
            prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
            full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
            full = list(full)[:max_length]
            labels = [-100] * min(len(prompt), len(full)) + list(full[len(prompt):])
            if all(x == -100 for x in labels[1:]):
                continue
            ids = torch.tensor([full], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = torch.tensor(labels[1:], device=device)
            total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return {"loss": total / max(count, 1), "tokens": count, "examples": len(examples)}


def run_one(args, name: str, packing: str, batch: int, seed: int, train_ex, heldout_ex, max_steps: int) -> dict:
    import torch

    from align.models import load_tokenizer
    from align.train import build_trainer, load_training_model
    from harmgate.rundir import RunDir

    on_gpu = torch.cuda.is_available()
    config = _config(args, packing, batch, seed, on_gpu, max_steps)
    tokenizer = load_tokenizer(args.model)
    model = load_training_model(config, on_gpu)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(RunDir(Path(tmp)), config, model, tokenizer, train_ex, on_gpu)
        trainer.model.train()
        trainer.train()
    seconds = time.perf_counter() - started
    curve = [{"step": h["step"], "loss": h["loss"], "tokens": h.get("num_input_tokens_seen")}
             for h in trainer.state.log_history if "loss" in h and math.isfinite(h["loss"])]
    result = {"packing": packing, "batch": batch, "seed": seed, "steps": trainer.state.global_step,
              "train_seconds": round(seconds, 2), "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
              "curve": curve, "heldout": heldout_loss(trainer.model, tokenizer, heldout_ex, args.max_length)}
    print(f"[loss] {name}: {result['steps']} steps, {result['tokens_seen']} tokens, final train loss "
          f"{curve[-1]['loss']:.4f}, held-out {result['heldout']['loss']:.4f} ({seconds:.0f} s)", flush=True)
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def ema(values: list[float], alpha: float = 0.1) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is not installed", flush=True)
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    for (name, run), color in zip(report["runs"].items(), ("tab:blue", "tab:orange", "tab:gray")):
        xs = [p["tokens"] if p["tokens"] is not None else p["step"] for p in run["curve"]]
        ys = [p["loss"] for p in run["curve"]]
        ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(xs, ema(ys), color=color, linewidth=1.8,
                label=f"{name} (held-out {run['heldout']['loss']:.4f})")
    ax.set_xlabel("real tokens seen")
    ax.set_ylabel("training loss (completion tokens, EMA 0.1 over faint raw)")
    ax.set_title(f"{report['model']}: packed vs unpacked QLoRA, {report['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="hub id or local folder")
    parser.add_argument("--examples", type=int, default=2000, help="examples drawn from the mixture")
    parser.add_argument("--heldout", type=float, default=0.1, help="fraction held out for the final loss")
    parser.add_argument("--batch", type=int, default=16, help="unpacked: samples per step")
    parser.add_argument("--packed-batch", type=int, default=None,
                        help="packed: rows per step; default: the same real tokens per step as --batch")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-steps", type=int, default=None, help="default: one epoch of the unpacked run")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-noise-run", action="store_true", help="skip the unpacked run with another seed")
    parser.add_argument("--liger", action="store_true", help="Liger kernels in every run (GPU)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "loss_curves.json"))
    args = parser.parse_args(argv)

    import torch

    from align.mixture import build_mixture
    from align.models import load_tokenizer

    on_gpu = torch.cuda.is_available()
    cfg = _config(args, "none", args.batch, args.seed, on_gpu, 1)
    examples = [{"prompt": e["prompt"], "completion": e["completion"]} for e in build_mixture(cfg.data).examples]
    random.Random(args.seed).shuffle(examples)
    n_held = max(1, int(len(examples) * args.heldout))
    heldout_ex, train_ex = examples[:n_held], examples[n_held:]
    # Same real tokens per optimizer step: rows of max_length hold about max_length / mean-length samples.
    tokenizer = load_tokenizer(args.model)
    lengths = [min(args.max_length, len(tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=True,
                                                                      return_dict=True)["input_ids"]))
               for e in train_ex]
    mean_len = sum(lengths) / len(lengths)
    packed_batch = args.packed_batch or max(1, round(args.batch * mean_len / (args.max_length * 0.97)))
    max_steps = args.max_steps or max(1, len(train_ex) // args.batch)
    # The packed run sees the same number of tokens: its steps carry about the same tokens as the unpacked ones.
    runs = {"unpacked": ("none", args.batch, args.seed), "packed": ("padding_free", packed_batch, args.seed)}
    if not args.no_noise_run:
        runs["unpacked, seed+1"] = ("none", args.batch, args.seed + 1)
    report: dict[str, Any] = {
        "bench": "loss_curves", "schema_version": 1, "model": args.model,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "data": {"source": "Anthropic/hh-rlhf harmless-base test, chosen", "train_examples": len(train_ex),
                 "heldout_examples": len(heldout_ex), "mean_tokens": round(mean_len, 1)},
        "settings": {"max_length": args.max_length, "lr": args.lr, "scheduler": "constant", "lora": "r=16 all-linear",
                     "quantization": "nf4", "max_steps": max_steps, "liger": args.liger and on_gpu},
        "runs": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, (packing, batch, seed) in runs.items():
        steps = max_steps if packing == "none" else max(1, round(max_steps * args.batch * mean_len /
                                                                (packed_batch * args.max_length * 0.97)))
        report["runs"][name] = run_one(args, name, packing, batch, seed, train_ex, heldout_ex, steps)
        out.write_text(json.dumps(report, indent=1))
    r = report["runs"]
    report["comparison"] = {
        "heldout_packed_minus_unpacked": round(r["packed"]["heldout"]["loss"] - r["unpacked"]["heldout"]["loss"], 5)}
    if "unpacked, seed+1" in r:
        report["comparison"]["heldout_seed_noise"] = round(
            r["unpacked, seed+1"]["heldout"]["loss"] - r["unpacked"]["heldout"]["loss"], 5)
    report["png"] = str(out.with_suffix(".png")) if plot(report, out.with_suffix(".png")) else None
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["comparison"]), f"-> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
