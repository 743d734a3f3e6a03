"""QLoRA training throughput of `harmgate train`'s path vs TRL baselines, on a random model of a real shape.

    python bench/train_throughput.py                            # GPU: Llama-3.1-8B shape, configs 1-3
    python bench/train_throughput.py --mode ablation            # harmgate's path, one lever off at a time
    python bench/train_throughput.py --mode ddp --gpus 2        # harmgate's path on 1 and 2 GPUs (accelerate)
    python bench/train_throughput.py --mode eval-gen            # batched vs one-at-a-time generation
    python bench/train_throughput.py --shape tiny --steps 3     # CPU smoke run of the whole machinery

Every configuration is built by align.train.build_trainer (the code `harmgate train` runs) on a base loaded by
align.train.load_training_model (NF4 double-quant through align.train.bnb_config, bf16 compute, LoRA r=16 on all
linear layers, gradient checkpointing). Each configuration runs in its own subprocess (Liger patches modules
globally) and sweeps its batch sizes on one loaded model, smallest first; a point whose peak allocated memory
exceeds --budget-gib is marked over_budget and larger points are skipped, an OOM or error is recorded and the
run goes on. Tokens/s counts real tokens only (Trainer's non-padding token counter), median over the timed steps
after --warmup. MFU = tokens/s x 6 x n_params / peak bf16 dense FLOP/s of the card (per GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.synthetic import SHAPES, sample_lengths, save_random_model, token_examples, word_prompts  # noqa: E402

GIB = 1024 ** 3
# Peak dense bf16 tensor FLOP/s (no sparsity), from NVIDIA's data sheets.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L4", 121.0), ("T4", 65.0)]

# name -> (what it is, training overrides, lora dropout, default sweep points "batch" or "batch x every_n_layers")
CONFIGS: dict[str, dict[str, Any]] = {
    "trl_defaults": {
        "label": "1. TRL SFTTrainer defaults (padded, SDPA)",
        "training": {}, "lora_dropout": 0.05, "points": ["4", "16"]},
    "trl_liger_packing": {
        "label": "2. TRL + Liger + packing (bfd, one flat row)",
        "training": {"packing": "padding_free", "packing_layout": "flat", "use_liger_kernel": True},
        "lora_dropout": 0.05, "points": ["4", "8", "16"]},
    "trl_tuned": {
        "label": "2b. TRL + Liger + packing + fused AdamW + no LoRA dropout",
        "training": {"packing": "padding_free", "packing_layout": "flat", "use_liger_kernel": True,
                     "optimizer": "adamw_torch_fused"},
        "lora_dropout": 0.0, "points": ["4", "8"]},
    "harmgate": {
        "label": "3. harmgate (packed rows, Liger, fused AdamW, no LoRA dropout)",
        "training": {"packing": "padding_free", "packing_layout": "rows", "use_liger_kernel": True,
                     "optimizer": "adamw_torch_fused"},
        "lora_dropout": 0.0, "points": ["8", "12", "16"]},
}
# harmgate first: if the time budget runs out, the baselines (anchored in the issue) are what is lost
DEFAULT_CONFIGS = ["harmgate", "trl_liger_packing", "trl_defaults"]

# Ablation: harmgate's configuration with one lever changed; "batch" None means the --ablation-batch.
ABLATION: list[tuple[str, dict[str, Any], float | None, str | None]] = [
    ("harmgate (all levers)", {}, None, None),
    ("- rows layout (TRL's flat row)", {"packing_layout": "flat"}, None, None),
    ("- packing (padded samples, 3x batch)", {"packing": "none"}, None, "x3"),
    ("- fused AdamW", {"optimizer": "adamw_torch"}, None, None),
    ("+ LoRA dropout 0.05", {}, 0.05, None),
    ("+ selective checkpointing (SAC)", {"selective_checkpointing": True}, None, None),
    ("+ flex attention", {"attn_implementation": "flex_attention"}, None, None),
    ("- Liger", {"use_liger_kernel": False}, None, None),
    ("+ torch.compile", {"torch_compile": True}, None, None),
]


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "liger-kernel", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "-"
    return out


def git_commit(repo: Path = REPO) -> str | None:
    """HEAD of the checkout this script runs from; None for an unpacked `git archive` (no .git of its own), where
    git would otherwise answer with the HEAD of whatever repository encloses the folder."""
    try:
        top, head = subprocess.run(["git", "rev-parse", "--show-toplevel", "--short", "HEAD"], cwd=repo,
                                   capture_output=True, text=True, check=True).stdout.split()
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None
    return head if Path(top).resolve() == Path(repo).resolve() else None


# ---------------------------------------------------------------- worker (one subprocess per configuration)

def _run_config(spec: dict[str, Any], model_dir: str, lora_dropout: float, training: dict[str, Any], on_gpu: bool):
    from harmgate.config import parse_config

    t = {"max_steps": spec["warmup"] + spec["steps"], "max_seq_length": spec["max_length"],
         "gradient_checkpointing": True, "logging_steps": 1, "save_steps": 10_000, "seed": spec["seed"],
         "learning_rate": 1e-4, **training}
    if not on_gpu and t.get("use_liger_kernel"):
        t["use_liger_kernel"] = False  # Triton kernels need a GPU; the CPU smoke run checks the rest
    return parse_config({
        "name": "bench", "model": {"base": model_dir},
        "quantization": {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True,
                         "compute_dtype": "bfloat16" if on_gpu else "float32"},
        "lora": {"r": 16, "alpha": 32, "dropout": lora_dropout, "target_modules": "all-linear"},
        "training": t,
        "data": {"sources": [{"id": "synthetic", "format": "instruction"}]},
        "evals": {"suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "k", "metric": "a.b", "direction": "lower", "max": 1}]},
    })


def _step_timer(on_gpu: bool):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict[str, float]] = []
            self._t = self._tokens = None

        def _now(self) -> float:
            if on_gpu:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            if self._t is None:
                self._t, self._tokens = self._now(), 0

        def on_step_end(self, args, state, control, **kwargs):
            now, tokens = self._now(), int(state.num_input_tokens_seen or 0)
            self.steps.append({"seconds": now - self._t, "tokens": tokens - self._tokens})
            self._t, self._tokens = now, tokens

    return StepTimer()


def _release(trainer) -> None:
    """Give the base model back without LoRA layers or TRL's fused-head patch, for the next sweep point."""
    import gc

    import torch

    model = trainer.model
    trainer.accelerator.free_memory()  # it holds the prepared model and optimizer (LoRA weights, Adam states)
    base = model.unload() if hasattr(model, "unload") else model
    base.__dict__.pop("forward", None)  # TRL's add_fused_lm_head sets an instance-level forward
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return base


def _has_lora(model) -> bool:
    return any(type(m).__module__.startswith("peft.") for m in model.modules())


def _free(on_gpu: bool) -> None:
    import gc

    import torch

    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()


def _parse_point(point: str) -> tuple[int, int]:
    batch, _, every = str(point).partition("x")
    return int(batch), int(every or 1)


def worker(spec: dict[str, Any]) -> None:
    import torch

    from align.models import load_tokenizer
    from align.train import build_trainer, load_training_model
    from harmgate.rundir import RunDir

    on_gpu = torch.cuda.is_available()
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    shape = SHAPES[spec["shape"]]
    results: list[dict[str, Any]] = []
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    peak = peak_tflops(device, spec.get("peak_tflops"))
    base_cfg = _run_config(spec, spec["model_dir"], 0.0, {}, on_gpu)
    started = time.perf_counter()
    tokenizer = load_tokenizer(spec["model_dir"])
    model = load_training_model(base_cfg, on_gpu)
    load_seconds = round(time.perf_counter() - started, 2)
    max_batch = max(_parse_point(p["point"])[0] for p in spec["points"])
    n_samples = int((spec["warmup"] + spec["steps"]) * max_batch * world * 4.5) + 16
    examples = token_examples(sample_lengths(n_samples, seed=spec["seed"], high=spec["max_length"]),
                              shape.vocab_size, seed=spec["seed"])
    skip_from: list[tuple[int, int]] = []
    for p in spec["points"]:
        batch, every = _parse_point(p["point"])
        row: dict[str, Any] = {"config": p["config"], "label": p["label"], "batch_size": batch,
                               "every_n_layers": every, "gpus": world, "load_seconds": load_seconds,
                               "training": p["training"], "lora_dropout": p["lora_dropout"]}
        results.append(row)
        if any(batch >= b and every <= e for b, e in skip_from):
            row.update(status="skipped", error="a smaller point already exceeded the budget or ran out of memory")
            continue
        trainer = None
        try:
            cfg = _run_config(spec, spec["model_dir"], p["lora_dropout"],
                              {**p["training"], "per_device_batch_size": batch, "checkpoint_every_n_layers": every},
                              on_gpu)
            row["liger"] = cfg.training.use_liger_kernel
            model.set_attn_implementation(cfg.training.attn_implementation or "sdpa")
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            with tempfile.TemporaryDirectory() as tmp:
                timer = _step_timer(on_gpu)
                set_up = time.perf_counter()
                trainer = build_trainer(RunDir(Path(tmp)), cfg, model, tokenizer, examples, on_gpu)
                trainer.add_callback(timer)
                trainer.model.train()
                row["setup_seconds"] = round(time.perf_counter() - set_up, 2)
                trainer.train()
            timed = timer.steps[spec["warmup"]:]
            if not timed:
                raise RuntimeError(f"no timed steps: {len(timer.steps)} steps ran, warm-up is {spec['warmup']}")
            rates = [s["tokens"] / s["seconds"] for s in timed]
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            row.update(
                status="ok", steps=timer.steps, tokens_per_s=round(statistics.median(rates), 1),
                step_seconds_median=round(statistics.median(s["seconds"] for s in timed), 4),
                tokens_per_step_median=statistics.median(s["tokens"] for s in timed),
                losses=[round(x, 4) for x in losses],
            )
            if on_gpu:
                row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
                row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
                if row["peak_allocated_gib"] > spec["budget_gib"]:
                    row["status"] = "over_budget"
                    skip_from.append((batch, every))
            if peak:
                row["mfu"] = round(row["tokens_per_s"] / world * 6 * shape.n_params() / (peak * 1e12), 4)
        except torch.OutOfMemoryError as err:
            row.update(status="oom", error=str(err).splitlines()[0][:300])
            skip_from.append((batch, every))
        except Exception as err:  # noqa: BLE001 - recorded, and the sweep goes on
            row.update(status="error", error=f"{type(err).__name__}: {str(err)[:500]}")
        finally:
            if trainer is not None:
                model = _release(trainer)
            elif _has_lora(model):  # the trainer failed after attaching LoRA: start the next point from a clean load
                del model
                _free(on_gpu)
                model = load_training_model(base_cfg, on_gpu)
            _free(on_gpu)
        if rank == 0:  # after every point, so a worker killed by a timeout still leaves what it measured
            Path(spec["result"]).write_text(json.dumps({"device": device, "results": results}, indent=1))
        if p["training"].get("torch_compile"):
            break  # a compiled model is not reused; compile points go last
        print(f"[bench] {row['config']} batch {batch}/{every}: {row.get('status')} "
              f"{row.get('tokens_per_s', '-')} tok/s, peak {row.get('peak_allocated_gib', '-')} GiB", flush=True)
    if rank == 0:
        Path(spec["result"]).write_text(json.dumps({"device": device, "results": results}, indent=1))


def eval_gen_worker(spec: dict[str, Any]) -> None:
    """Prompts/s of evals.generate.generate batched vs one prompt at a time, bf16 (as harmgate's eval loads)."""
    import torch

    from align.models import load_causal_lm, load_tokenizer
    from evals.generate import generate
    from harmgate.config import GenerationConfig

    on_gpu = torch.cuda.is_available()
    started = time.perf_counter()
    model = load_causal_lm(spec["model_dir"], dtype="bfloat16" if on_gpu else "float32",
                           device_map={"": 0} if on_gpu else None).eval()
    tokenizer = load_tokenizer(spec["model_dir"])
    load_seconds = time.perf_counter() - started
    shape = SHAPES[spec["shape"]]
    prompts = word_prompts(spec["prompts"], shape.vocab_size, seed=spec["seed"])
    # max_new_tokens is a fixed workload: a random model almost never emits the end-of-turn token.
    # backend hf: this mode measures model.generate batched vs one at a time (issue 8); the static engine that
    # evals now use on a GPU is measured by bench/eval_throughput.py
    gen = GenerationConfig(max_new_tokens=spec["max_new_tokens"], batch_size=spec["gen_batch"], backend="hf")
    generate(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2, backend="hf"),
             desc="warm-up")
    out: dict[str, Any] = {"load_seconds": round(load_seconds, 2), "max_new_tokens": spec["max_new_tokens"],
                           "dtype": "bfloat16" if on_gpu else "float32", "runs": []}
    for label, batch, n in (("batched", spec["gen_batch"], spec["prompts"]), ("one at a time", 1, spec["single_prompts"])):
        gen = GenerationConfig(max_new_tokens=spec["max_new_tokens"], batch_size=batch, backend="hf")
        t0 = time.perf_counter()
        replies = generate(model, tokenizer, prompts[:n], gen, desc=label)
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        new_tokens = sum(len(tokenizer(r[0], add_special_tokens=False)["input_ids"]) for r in replies)
        out["runs"].append({"mode": label, "batch_size": batch, "prompts": n, "seconds": round(seconds, 2),
                            "prompts_per_s": round(n / seconds, 3), "new_tokens_per_s": round(new_tokens / seconds, 1)})
    b, s = out["runs"]
    out["speedup"] = round(b["prompts_per_s"] / s["prompts_per_s"], 2)
    if on_gpu:
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    Path(spec["result"]).write_text(json.dumps(out, indent=1))


def make_model_worker(spec: dict[str, Any]) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = save_random_model(SHAPES[spec["shape"]], Path(spec["model_dir"]), seed=spec["seed"], device=device)
    Path(spec["result"]).write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------- parent: orchestration, table, JSON

def _spawn(spec: dict[str, Any], work: Path, name: str, log, timeout: int, gpus: int = 1) -> dict[str, Any]:
    spec = {**spec, "result": str(work / f"{name}.result.json")}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    script = str(Path(__file__).resolve())
    if gpus > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "--multi_gpu",
               "--mixed_precision", "no", "--num_machines", "1", "--dynamo_backend", "no",
               script, "--worker", str(spec_path)]
    else:
        cmd = [sys.executable, script, "--worker", str(spec_path)]
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
           "NCCL_NVLS_ENABLE": "0", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(
               [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if gpus == 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = "0"  # one process seeing two GPUs would make Trainer use nn.DataParallel
    started = time.perf_counter()
    log.write(f"\n===== {name}: {' '.join(cmd)}\n")
    log.flush()
    # Own process group: on a timeout the whole worker tree (accelerate's ranks too) is killed and frees the GPU.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1))
        rc: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc = f"killed after the {timeout} s it was given"
    log.write(output[-20000:])
    log.write(f"\n===== {name}: exit {rc} after {time.perf_counter() - started:.0f} s\n")
    log.flush()
    for line in output.splitlines():
        if line.startswith("[bench]"):
            print(line, flush=True)
    result = Path(spec["result"])
    if result.is_file():
        data = json.loads(result.read_text())
        data["wall_seconds"] = round(time.perf_counter() - started, 1)
        return data
    tail = "\n".join(output.strip().splitlines()[-5:])
    return {"error": f"worker {name} exited {rc} without a result: {tail[-800:]}",
            "wall_seconds": round(time.perf_counter() - started, 1)}


def _points(name: str, points: list[str] | None) -> list[dict[str, Any]]:
    c = CONFIGS[name]
    chosen = points or c["points"]
    chosen = sorted(chosen, key=lambda p: _parse_point(p))
    return [{"config": name, "label": c["label"], "point": p, "training": c["training"],
             "lora_dropout": c["lora_dropout"]} for p in chosen]


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("tokens_per_s"):
            if r["config"] not in best or r["tokens_per_s"] > best[r["config"]]["tokens_per_s"]:
                best[r["config"]] = {k: r.get(k) for k in ("tokens_per_s", "batch_size", "every_n_layers",
                                                           "peak_allocated_gib", "mfu", "gpus")}
    return best


def _table(title: str, rows: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title=title)
    for col in ("configuration", "batch", "status", "tokens/s", "step s", "peak alloc GiB", "peak resv GiB", "MFU"):
        table.add_column(col, justify="left" if col in ("configuration", "status") else "right")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        batch = str(r.get("batch_size", "-")) + (f" (ckpt 1/{r['every_n_layers']})" if r.get("every_n_layers", 1) > 1 else "")
        table.add_row(r.get("label", r.get("config", "?")), batch, r.get("status", "error"),
                      f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-",
                      f"{r['step_seconds_median']:.3f}" if r.get("step_seconds_median") else "-",
                      str(r.get("peak_allocated_gib", "-")), str(r.get("peak_reserved_gib", "-")), mfu)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["compare", "ablation", "ddp", "eval-gen"], default="compare")
    parser.add_argument("--eval-gen", action="store_true", help="also run the eval-generation benchmark")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="model shape (default: llama-3.1-8b on a GPU, tiny on a CPU)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--batch-sizes", default=None,
                        help="sweep points for every config, e.g. 4,8,16 or 8x2 (batch 8, checkpoint every 2nd "
                             "layer); default: each config's own list")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--budget-gib", type=float, default=15.0, help="peak allocated GPU memory allowed")
    parser.add_argument("--ablation-batch", type=int, default=8)
    parser.add_argument("--skip-compile", action="store_true", help="ablation without the torch.compile point")
    parser.add_argument("--gpus", type=int, default=2, help="--mode ddp: processes (GPUs)")
    parser.add_argument("--ddp-batch", type=int, default=8, help="--mode ddp: per-device batch (rows)")
    parser.add_argument("--gen-prompts", type=int, default=64)
    parser.add_argument("--gen-single-prompts", type=int, default=8)
    parser.add_argument("--gen-batch", type=int, default=64)
    parser.add_argument("--gen-max-new-tokens", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the card's peak bf16 TFLOP/s")
    parser.add_argument("--model-dir", default=None, help="reuse a saved random model (default: build one)")
    parser.add_argument("--work-dir", default=None, help="where the model and worker files go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per worker subprocess")
    parser.add_argument("--time-budget", type=int, default=560,
                        help="seconds for the whole run: workers are cut to fit it and later ones skipped, so the "
                             "JSON is written before a 10-minute device call ends")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "train_throughput.json"))
    parser.add_argument("--log", default=None, help="worker output log (default: next to --out)")
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        {"train": worker, "eval_gen": eval_gen_worker, "make_model": make_model_worker}[spec["kind"]](spec)
        return 0

    import torch
    from rich.console import Console

    groups = _groups(args) if args.mode in ("compare", "ablation", "ddp") else []  # bad arguments fail here, early
    console = Console(width=160)
    on_gpu = torch.cuda.is_available()
    shape = args.shape or ("llama-3.1-8b" if on_gpu else "tiny")
    device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(args.log) if args.log else out_path.with_suffix(".log")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "bench": "train_throughput", "schema_version": 1, "mode": args.mode, "shape": shape,
        "n_params": SHAPES[shape].n_params(), "device": device, "gpu_count": torch.cuda.device_count(),
        "peak_tflops": peak_tflops(device, args.peak_tflops), "versions": versions(), "git_commit": git_commit(),
        "settings": {"steps": args.steps, "warmup": args.warmup, "max_length": args.max_length,
                     "budget_gib": args.budget_gib, "lengths": "lognormal(mu=5.5, sigma=0.7) clipped to [32, max]",
                     "prompt_fraction": 0.3, "lora": "r=16 alpha=32 all-linear", "quantization": "nf4 double-quant",
                     "compute_dtype": "bfloat16" if on_gpu else "float32", "gradient_checkpointing": True,
                     "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")},
        "runs": [],
    }
    base_spec = {"shape": shape, "steps": args.steps, "warmup": args.warmup, "max_length": args.max_length,
                 "budget_gib": args.budget_gib, "seed": args.seed, "peak_tflops": args.peak_tflops}

    deadline = started + args.time_budget

    def left() -> int:
        return int(min(args.timeout, deadline - time.perf_counter()))

    def save() -> None:
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        out_path.write_text(json.dumps(report, indent=1))

    with log_path.open("w") as log:
        model_dir = args.model_dir
        if not model_dir:
            model_dir = str(work / f"random-{shape}")
            made = _spawn({**base_spec, "kind": "make_model", "model_dir": model_dir}, work, "make_model", log,
                          left())
            report["model"] = made
            console.print(f"random {shape} model: {made}")
            if "error" in made:
                save()
                console.print(f"[red]{made['error']}")
                return 1
        base_spec["model_dir"] = model_dir

        if args.mode in ("compare", "ablation", "ddp"):
            for name, points, gpus in groups:
                if not points:
                    continue
                if left() < 60:
                    report["runs"].extend({**p, "status": "skipped", "error": "time budget spent"} for p in points)
                    continue
                got = _spawn({**base_spec, "kind": "train", "points": points}, work, name, log, left(), gpus)
                rows = got.get("results") or [{**p, "status": "error", "error": got.get("error")} for p in points]
                for r in rows:
                    r.setdefault("batch_size", _parse_point(r.get("point", "0"))[0])
                    r["worker_wall_seconds"] = got.get("wall_seconds")
                report["runs"].extend(rows)
                save()
            order = list(CONFIGS)  # table in configuration order, whatever order they ran in
            report["runs"].sort(key=lambda r: order.index(r["config"]) if r.get("config") in order else len(order))
            report["best"] = _best(report["runs"])
            _summaries(report, args)
            console.print(_table(f"QLoRA training throughput, {shape} shape, {device} "
                                 f"(budget {args.budget_gib} GiB peak)", report["runs"]))
            _print_summary(console, report)
        if args.mode == "eval-gen" or args.eval_gen:
            got = _spawn({**base_spec, "kind": "eval_gen", "prompts": args.gen_prompts,
                          "single_prompts": args.gen_single_prompts, "gen_batch": args.gen_batch,
                          "max_new_tokens": args.gen_max_new_tokens}, work, "eval_gen", log, max(left(), 60))
            report["eval_generation"] = got
            for r in got.get("runs", []):
                console.print(f"eval generation {r['mode']:>14}: batch {r['batch_size']:>3}, {r['prompts']} prompts, "
                              f"{r['prompts_per_s']:.2f} prompts/s, {r['new_tokens_per_s']:.0f} new tokens/s")
            if "speedup" in got:
                console.print(f"batched / one-at-a-time prompts/s: {got['speedup']}x")
            elif "error" in got:
                console.print(f"[red]eval generation: {got['error']}")
    save()
    console.print(f"wrote {out_path} and {log_path} in {report['wall_seconds']:.0f} s")
    return 0


def _groups(args) -> list[tuple[str, list[dict[str, Any]], int]]:
    """(worker name, sweep points, processes) per subprocess."""
    pts = args.batch_sizes.split(",") if args.batch_sizes else None
    if args.mode == "compare":
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise SystemExit(f"unknown --configs {unknown}; known: {', '.join(CONFIGS)}")
        return [(n, _points(n, pts), 1) for n in names]
    h = CONFIGS["harmgate"]
    if args.mode == "ddp":
        if args.gpus < 2:
            raise SystemExit(f"--mode ddp needs --gpus 2 or more (got {args.gpus}); this machine has "
                             f"{__import__('torch').cuda.device_count()} GPU(s)")
        point = _points("harmgate", [str(args.ddp_batch)])
        return [("harmgate_1gpu", point, 1), (f"harmgate_{args.gpus}gpu", point, args.gpus)]
    with_liger, without, compiled = [], [], []
    for label, change, dropout, batch_rule in ABLATION:
        batch = args.ablation_batch * 3 if batch_rule == "x3" else args.ablation_batch
        p = {"config": "ablation", "label": label, "point": str(batch), "training": {**h["training"], **change},
             "lora_dropout": h["lora_dropout"] if dropout is None else dropout}
        (compiled if change.get("torch_compile") else without if change.get("use_liger_kernel") is False
         else with_liger).append(p)
    return [("ablation", with_liger, 1), ("ablation_no_liger", without, 1),
            ("ablation_compile", [] if args.skip_compile else compiled, 1)]


def _summaries(report: dict[str, Any], args) -> None:
    best = report.get("best", {})
    if "harmgate" in best and "trl_liger_packing" in best:
        report["harmgate_vs_config2"] = round(best["harmgate"]["tokens_per_s"] / best["trl_liger_packing"]["tokens_per_s"], 3)
    if args.mode == "ddp":
        ok = [r for r in report["runs"] if r.get("status") == "ok"]
        singles = [r for r in ok if r.get("gpus") == 1]
        multis = [r for r in ok if r.get("gpus", 1) > 1]
        if singles and multis:
            one, many = singles[0], multis[0]
            report["ddp"] = {"gpus": many["gpus"], "tokens_per_s_1gpu": one["tokens_per_s"],
                             "tokens_per_s_ngpu": many["tokens_per_s"],
                             "scaling_efficiency": round(many["tokens_per_s"] / (many["gpus"] * one["tokens_per_s"]), 3)}
    if args.mode == "ablation":
        ok = {r["label"]: r for r in report["runs"] if r.get("status") == "ok"}
        full = ok.get(ABLATION[0][0])
        if full:
            report["ablation"] = {label: {"tokens_per_s": r["tokens_per_s"],
                                          "vs_all_levers": round(r["tokens_per_s"] / full["tokens_per_s"], 3),
                                          "peak_allocated_gib": r.get("peak_allocated_gib")}
                                  for label, r in ok.items()}


def _print_summary(console, report: dict[str, Any]) -> None:
    for name, b in report.get("best", {}).items():
        console.print(f"best {name}: {b['tokens_per_s']:,.0f} tokens/s at batch {b['batch_size']}"
                      f" (peak {b.get('peak_allocated_gib', '-')} GiB, MFU {b.get('mfu', '-')})")
    if "harmgate_vs_config2" in report:
        console.print(f"harmgate / config 2: {report['harmgate_vs_config2']}x (goal >= 1.5x)")
    if "ddp" in report:
        d = report["ddp"]
        console.print(f"DDP {d['gpus']} GPUs: {d['tokens_per_s_ngpu']:,.0f} tokens/s vs 1 GPU "
                      f"{d['tokens_per_s_1gpu']:,.0f}: scaling efficiency {d['scaling_efficiency']:.0%}")


if __name__ == "__main__":
    sys.exit(main())
