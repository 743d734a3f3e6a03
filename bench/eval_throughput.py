"""Evaluation generation throughput: today's path (transformers ``model.generate``) against the static-cache path
(evals/fastgen.py), in the same run.

Real model, any device (the suites' code on real prompts):

    .venv/bin/python bench/eval_throughput.py --model HuggingFaceTB/SmolLM2-135M-Instruct --prompts 32

Llama-3.1-8B shape on a GPU (random bf16 weights built on the GPU, no download; scripts/gpu/eval_speed.sh):

    python bench/eval_throughput.py --shape llama-3.1-8b --out $OUT/eval_throughput.json --time-budget 420

Both modes go through ``evals.generate.generate`` (the code the suites use) with ``backend`` set per row.
The shape mode measures, each phase written to the JSON as soon as it ends (a later failure keeps the earlier ones):

1. ``hf``: model.generate, batch 64 (the issue's reference point), steady state after a warm-up batch;
2. ``static-eager``: the static-cache loop without compiling (what the GPU path falls back to);
3. ``static-compiled``: the same loop with the decode step compiled into CUDA graphs (compile time reported apart),
   with the default grouped decode attention (evals/fastgen.py);
4. greedy agreement between 1 and 3 on the same prompts, next to the agreement of ``hf`` with itself at batch 32
   (a batch-shape change alone flips near-ties in bf16);
5. sampling, k continuations per prompt in one call (RealToxicityPrompts' protocol: k=25, 20 tokens), then the
   compiled loop at twice the batch (512 rows);
6. log-likelihood scoring (evals/suites/loglik.py) at the production batch and at a large one;
8. (run before 7, last because least needed) the compiled loop with transformers' SDPA attention instead;
7. an estimate of a full production evaluation (configs/llama31-8b.yaml: every suite, three arms) from the
   counted workload (bench/results/eval_workload_production.json) and the rates measured above.

A random model almost never emits its end token, so every row generates max_new_tokens: a fixed workload, and an
upper bound for a real model, whose refusals end early.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024 ** 3
HBM_TBPS = {"H200": 4.8, "H100": 3.35, "A100": 2.0, "L4": 0.3, "T4": 0.32}  # peak memory bandwidth, TB/s
WORKLOAD = Path(__file__).resolve().parent / "results" / "eval_workload_production.json"


# ---------------------------------------------------------------------------------------------- shared helpers

def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(), b.split()):
        if x != y:
            break
        n += 1
    return n


def agreement(a: list[str], b: list[str]) -> dict[str, Any]:
    """How far two sets of greedy replies to the same prompts agree: identical replies and the mean share of
    each reply's words before the first difference."""
    same = sum(x == y for x, y in zip(a, b))
    shares = [common_prefix(x, y) / max(1, len(x.split()), len(y.split())) for x, y in zip(a, b)]
    return {"prompts": len(a), "identical": same, "identical_share": round(same / max(1, len(a)), 4),
            "mean_shared_prefix_share": round(sum(shares) / max(1, len(shares)), 4)}


def bandwidth_tbps(device_name: str) -> float | None:
    for key, tbps in HBM_TBPS.items():
        if key in device_name:
            return tbps
    return None


# ---------------------------------------------------------------------------------------------- real-model mode

def real_model(args) -> int:
    import torch

    from align.models import load_causal_lm, load_tokenizer
    from evals.generate import generate
    from evals.suites import get_suite
    from harmgate.config import GenerationConfig, SuiteConfig
    from rich.console import Console
    from rich.table import Table

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
    rows = [("hf, one at a time", GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=1, backend="hf")),
            (f"hf, batch {args.batch_size}", GenerationConfig(max_new_tokens=args.max_new_tokens,
                                                              batch_size=args.batch_size, backend="hf")),
            (f"static, batch {args.static_batch_size}",
             GenerationConfig(max_new_tokens=args.max_new_tokens, backend="static", compile=not args.no_compile,
                              static_batch_size=args.static_batch_size))]
    runs = {}
    for label, gen in rows:
        generate(model, tokenizer, prompts[:2], gen.model_copy(update={"max_new_tokens": 4}), desc="warm-up")
        start = time.perf_counter()
        outputs = [o[0] for o in generate(model, tokenizer, prompts, gen, desc=label)]
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
        runs[label] = (seconds, tokens, outputs)
    table = Table(title="evaluation generation throughput")
    for col in ("mode", "prompts", "seconds", "prompts/s", "new tokens/s", "identical to hf batched"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    ref = runs[rows[1][0]][2]
    for label, (seconds, tokens, outputs) in runs.items():
        same = sum(a == b for a, b in zip(outputs, ref))
        table.add_row(label, str(len(prompts)), f"{seconds:.1f}", f"{len(prompts) / seconds:.2f}",
                      f"{tokens / seconds:.1f}", f"{same}/{len(prompts)}")
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------------- shape mode

class Report:
    """The JSON written after every phase, so a run cut short still leaves what it measured."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data = path, data
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def phase(self, name: str, value: Any) -> None:
        self.data.setdefault("phases", {})[name] = value
        self.save()


def say(msg: str) -> None:
    print(f"[eval-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_model(shape_name: str, seed: int):
    import torch
    from transformers import LlamaForCausalLM

    from bench.synthetic import SHAPES, build_tokenizer, llama_config

    shape = SHAPES[shape_name]
    on_gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    torch.manual_seed(seed)
    with torch.device("cuda" if on_gpu else "cpu"):
        model = LlamaForCausalLM._from_config(llama_config(shape, str(dtype).removeprefix("torch.")), dtype=dtype)
    model.eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    tokenizer = build_tokenizer(shape.vocab_size)
    return model, tokenizer, shape


def timed_generate(model, tokenizer, prompts, gen, *, k: int = 1, chat: bool = True, seed: int = 0,
                   desc: str) -> tuple[list[list[str]], float]:
    import torch

    from evals.generate import generate

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = generate(model, tokenizer, prompts, gen, k=k, chat=chat, seed=seed, desc=desc)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def count_tokens(tokenizer, outputs: list[list[str]]) -> int:
    return sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for outs in outputs for o in outs)


def rate_row(tokenizer, outputs, seconds: float, prompts: int, rows: int, **extra) -> dict[str, Any]:
    tokens = count_tokens(tokenizer, outputs)
    return {"prompts": prompts, "rows": rows, "seconds": round(seconds, 3), "new_tokens": tokens,
            "new_tokens_per_s": round(tokens / seconds, 1), "prompts_per_s": round(prompts / seconds, 3), **extra}


def peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None


def shape_mode(args) -> int:
    import torch

    from bench.synthetic import word_prompts
    from evals.generate import static_decoder
    from harmgate.config import GenerationConfig

    started = time.perf_counter()

    def left() -> float:
        return args.time_budget - (time.perf_counter() - started)

    on_gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    import transformers

    report = Report(Path(args.out), {
        "bench": "eval_throughput", "shape": args.shape, "device": device, "git_commit": git_commit(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)}, "phases": {}, "errors": {}})
    say(f"building a random {args.shape} model on {device}")
    t0 = time.perf_counter()
    model, tokenizer, shape = build_model(args.shape, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    report.data["model"] = {"params": n_params, "weight_gib": round(weight_bytes / GIB, 2),
                            "dtype": str(next(model.parameters()).dtype), "build_seconds": round(time.perf_counter() - t0, 1)}
    report.save()
    say(f"built {n_params / 1e9:.2f}B params in {time.perf_counter() - t0:.1f} s")
    prompts = word_prompts(max(args.prompts, args.hf_prompts, args.agree_prompts), shape.vocab_size,
                           mu=args.prompt_mu, sigma=0.5, seed=args.seed)
    base = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.hf_batch)

    def todays_attention() -> None:
        """model.generate as today: SDPA attention (a static-path phase switches the model to the grouped one)."""
        if model.config._attn_implementation != "sdpa":
            model.set_attn_implementation("sdpa")

    def guarded(name: str, need_s: float, fn) -> Any:
        if left() < need_s:
            say(f"skip {name}: {left():.0f} s left, needs about {need_s:.0f}")
            report.data["errors"][name] = f"skipped: {left():.0f} s left of the time budget"
            report.save()
            return None
        say(f"{name} ...")
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - record and go on: later phases still measure something
            traceback.print_exc()
            report.data["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
            report.save()
            if on_gpu:
                torch.cuda.empty_cache()
            return None
        report.phase(name, value)
        say(f"{name}: {json.dumps(value, default=str)[:600]}")
        return value

    # 1. today's path: model.generate at batch 64, steady state (a warm-up batch first)
    def hf_phase():
        todays_attention()
        gen = base.model_copy(update={"backend": "hf"})
        timed_generate(model, tokenizer, prompts[:args.hf_batch], gen.model_copy(update={"max_new_tokens": 8}),
                       desc="hf warm-up")
        torch.cuda.reset_peak_memory_stats() if on_gpu else None
        out, sec = timed_generate(model, tokenizer, prompts[:args.hf_prompts], gen, desc="hf")
        return rate_row(tokenizer, out, sec, args.hf_prompts, args.hf_prompts, backend="hf",
                        batch_size=args.hf_batch, peak_allocated_gib=peak_gib())
    hf = guarded("hf", 30, hf_phase)

    # 2. the static loop, eager (the fallback when compiling fails)
    def eager_phase():
        gen = base.model_copy(update={"backend": "static", "compile": False, "static_batch_size": args.static_batch})
        n = args.eager_prompts
        out, sec = timed_generate(model, tokenizer, prompts[:n], gen, desc="static eager")
        model._harmgate_static_decoder = None
        return rate_row(tokenizer, out, sec, n, n, backend="static", compile=False, batch_size=args.static_batch)
    guarded("static_eager", 40, eager_phase)

    # 3. the static loop, compiled: compile + first run, then steady state on the same prompts. Default settings
    #    (grouped decode attention); the same with transformers' SDPA attention runs last (phase 8).
    compiled_outputs: dict[str, list[str]] = {}

    def compiled_phase(grouped: bool):
        gen = base.model_copy(update={"backend": "static", "compile": True, "static_batch_size": args.static_batch,
                                      "grouped_attention": grouped})
        model._harmgate_static_decoder = None
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        # the first call is the timed call itself: every shape it needs (one per prompt-width bucket) compiles here
        warm, warm_s = timed_generate(model, tokenizer, prompts[:args.prompts], gen, desc="compile + first run")
        decoder = static_decoder(model, gen)
        first = decoder.stats.as_dict()
        say(f"compile + first run {warm_s:.1f} s; compiled={decoder.stats.compiled} attention="
            f"{decoder.stats.attention} {decoder.stats.compile_error or ''}")
        runs = []
        for rep in range(args.repeats):
            steps0, decode0 = decoder.stats.steps, decoder.stats.decode_s
            out, sec = timed_generate(model, tokenizer, prompts[:args.prompts], gen, desc=f"static compiled {rep}")
            runs.append(rate_row(tokenizer, out, sec, args.prompts, args.prompts,
                                 mean_decode_step_ms=round((decoder.stats.decode_s - decode0) * 1e3
                                                           / max(1, decoder.stats.steps - steps0), 3)))
            compiled_outputs.setdefault("grouped" if grouped else "sdpa", [o[0] for o in out])
            if left() < 60:
                break
        best = max(runs, key=lambda r: r["new_tokens_per_s"])
        compile_s = max(0.0, warm_s - best["seconds"])  # the first call's compiles (and CUDA-graph recordings)
        return {"backend": "static", "compile": decoder.stats.compiled, "compile_error": decoder.stats.compile_error,
                "attention": decoder.stats.attention, "batch_size": args.static_batch,
                "first_call_seconds": round(warm_s, 1), "first_call_stats": first,
                "compile_seconds": round(compile_s, 1), "first_call_shapes": len(first["shapes"]),
                "runs": runs, **{k: best[k] for k in ("new_tokens_per_s", "prompts_per_s", "seconds", "new_tokens",
                                                      "mean_decode_step_ms")},
                "decoder_stats": decoder.stats.as_dict(), "peak_allocated_gib": peak_gib()}
    fast = guarded("static_compiled", 120, lambda: compiled_phase(True))

    # 4. greedy agreement on the same prompts: static (from the timed run: same shapes, no new compile) vs hf at
    #    batch 64, and hf at batch 32 vs batch 64 (the control: a batch-shape change alone, same engine)
    def agree_phase():
        n = args.agree_prompts
        todays_attention()
        gen = base.model_copy(update={"backend": "hf"})
        hf64, _ = timed_generate(model, tokenizer, prompts[:n], gen, desc="agree hf")
        half = max(1, args.hf_batch // 2)
        hf32, _ = timed_generate(model, tokenizer, prompts[:n], gen.model_copy(update={"batch_size": half}),
                                 desc="agree hf/2")
        static = compiled_outputs.get("grouped") or compiled_outputs.get("sdpa")
        if static is None:  # the compiled phase did not run: the eager static loop, same shapes
            out, _ = timed_generate(model, tokenizer, prompts[:n], base.model_copy(
                update={"backend": "static", "compile": False, "static_batch_size": args.static_batch}),
                desc="agree static")
            static = [o[0] for o in out]
        a = [o[0] for o in hf64]
        return {"max_new_tokens": args.max_new_tokens, "static_vs_hf": agreement(static[:n], a),
                f"hf_batch_{half}_vs_hf_batch_{args.hf_batch}": agreement([o[0] for o in hf32], a)}
    guarded("greedy_agreement", 60, agree_phase)

    # 5. k samples per prompt as one batched call (RealToxicityPrompts: k=25, 20 new tokens, T=1, top-p 0.9)
    def sampling_phase():
        n, k = args.sample_prompts, args.sample_k
        gen = base.model_copy(update={"backend": "static", "static_batch_size": args.static_batch,
                                      "max_new_tokens": 20, "temperature": 1.0, "top_p": 0.9})
        first, first_s = timed_generate(model, tokenizer, prompts[:n], gen, k=k, chat=False,
                                        desc="sampling, new shapes")
        out, sec = timed_generate(model, tokenizer, prompts[:n], gen, k=k, chat=False, desc="sampling")
        row = rate_row(tokenizer, out, sec, n, n * k, k=k, max_new_tokens=20, first_call_seconds=round(first_s, 1))
        hf_gen = gen.model_copy(update={"backend": "hf", "batch_size": args.hf_batch})
        todays_attention()
        m = max(1, min(n, args.hf_batch * 4 // k))
        out_hf, sec_hf = timed_generate(model, tokenizer, prompts[:m], hf_gen, k=k, chat=False, desc="sampling hf")
        row["hf"] = rate_row(tokenizer, out_hf, sec_hf, m, m * k, batch_size=args.hf_batch)
        return row
    samp = guarded("sampling_k", 90, sampling_phase)

    # 5b. twice the rows per batch on the same prompts (one batch of 512): a new shape for the dynamic graph the
    #     compiled phase left (a CUDA-graph recording, not a compile), more rows over the same weight reads
    def big_batch_phase():
        rows = 2 * args.static_batch
        gen = base.model_copy(update={"backend": "static", "static_batch_size": rows})
        model._harmgate_static_decoder = None
        first, first_s = timed_generate(model, tokenizer, prompts[:args.prompts], gen, desc=f"static {rows} first")
        out, sec = timed_generate(model, tokenizer, prompts[:args.prompts], gen, desc=f"static {rows}")
        decoder = static_decoder(model, gen)
        model._harmgate_static_decoder = None
        return rate_row(tokenizer, out, sec, args.prompts, args.prompts, batch_size=rows,
                        first_call_seconds=round(first_s, 1), shapes=decoder.stats.as_dict()["shapes"],
                        peak_allocated_gib=peak_gib())
    guarded("static_compiled_batch_x2", 60, big_batch_phase)

    # 6. log-likelihood scoring, preference-style (each context with two continuations): today's rows (one per
    #    request, the production batch) against shared-prefix rows at a large batch
    def loglik_phase():
        from evals.suites.loglik import score_continuations

        n = args.loglik_items
        ctx = [p for p in prompts[:n // 2] for _ in range(2)]
        conts = word_prompts(n, shape.vocab_size, mu=4.0, sigma=0.5, seed=args.seed + 7)
        todays_attention()  # (prompts of more than one token go to SDPA either way)
        request_tokens = sum(len(tokenizer(c + " " + x)["input_ids"]) for c, x in zip(ctx, conts))
        shared_tokens = request_tokens - sum(len(tokenizer(c)["input_ids"]) for c in ctx[::2])
        rows = {}
        for label, bs, share in (("today", args.loglik_batch, False), ("shared", args.loglik_batch, True),
                                 ("new", args.loglik_big_batch, True)):
            score_continuations(model, tokenizer, ctx[:bs], conts[:bs], batch_size=bs, share_prefixes=share)
            if on_gpu:
                torch.cuda.synchronize()
            t = time.perf_counter()
            scores = score_continuations(model, tokenizer, ctx, conts, batch_size=bs, share_prefixes=share)
            if on_gpu:
                torch.cuda.synchronize()
            sec = time.perf_counter() - t
            processed = shared_tokens if share else request_tokens
            rows[label] = {"batch_size": bs, "share_prefixes": share, "requests": n, "seconds": round(sec, 3),
                           "request_tokens": request_tokens, "processed_tokens": processed,
                           "tokens_per_s": round(processed / sec, 1),
                           "request_tokens_per_s": round(request_tokens / sec, 1),
                           "requests_per_s": round(n / sec, 2), "logprobs_head": [s.logprob for s in scores[:4]]}
        a = [s for s in rows["today"]["logprobs_head"]]
        b = [s for s in rows["new"]["logprobs_head"]]
        rows["max_abs_logprob_difference_head"] = max(abs(x - y) for x, y in zip(a, b))
        rows["speedup"] = round(rows["today"]["seconds"] / rows["new"]["seconds"], 2)
        return rows
    ll = guarded("loglik", 30, loglik_phase)

    # 8. the compiled loop with transformers' SDPA attention (copies each KV head per query head): the grouped
    #    attention's share, and the other default's numbers if the grouped path failed
    sdpa = guarded("static_compiled_sdpa", 200, lambda: compiled_phase(False))
    if sdpa and compiled_outputs.get("grouped") and compiled_outputs.get("sdpa"):
        sdpa["grouped_vs_sdpa_agreement"] = agreement(compiled_outputs["grouped"], compiled_outputs["sdpa"])
        report.phase("static_compiled_sdpa", sdpa)

    # 7. roof line and the production estimate
    summary: dict[str, Any] = {}
    fast = fast or sdpa
    if hf and fast:
        summary["speedup_new_tokens_per_s"] = round(fast["new_tokens_per_s"] / hf["new_tokens_per_s"], 2)
        summary["fast_attention"] = fast.get("attention")
        if sdpa and sdpa is not fast:
            summary["speedup_sdpa_attention"] = round(sdpa["new_tokens_per_s"] / hf["new_tokens_per_s"], 2)
        tbps = bandwidth_tbps(device)
        if tbps:
            kv = kv_read_bytes(model, args)
            step_floor = (weight_bytes + kv) / (tbps * 1e12)
            summary["bandwidth"] = {
                "peak_tbps": tbps, "weight_bytes": weight_bytes, "mean_kv_bytes_per_step": kv,
                "floor_step_ms": round(step_floor * 1e3, 3), "measured_step_ms": fast["mean_decode_step_ms"],
                "attention": fast.get("attention"),
                "fraction_of_bandwidth_limit": round(step_floor * 1e3 / fast["mean_decode_step_ms"], 3),
                "limit_new_tokens_per_s_at_batch": round(args.static_batch / step_floor, 0)}
    summary["production_estimate"] = production_estimate(hf, fast, samp, ll, report.data["phases"])
    report.data["summary"] = summary
    report.data["wall_seconds"] = round(time.perf_counter() - started, 1)
    report.save()
    say(f"summary: {json.dumps(summary, default=str)}")
    return 0


def kv_read_bytes(model, args) -> int:
    """Bytes of KV cache one decode step reads: every row's whole static cache (prompt bucket + new tokens)."""
    from evals.fastgen import kv_bytes_per_token, prompt_bucket

    width = prompt_bucket(int(2.72 ** args.prompt_mu) + 12)  # median prompt + chat template markers, bucketed
    return args.static_batch * (width + args.max_new_tokens) * kv_bytes_per_token(model.config, 2)


def production_estimate(hf, fast, samp, ll, phases) -> dict[str, Any] | None:
    """Wall time of configs/llama31-8b.yaml's evaluation (every suite, base + tuned + prompted) from the counted
    workload and the measured rates. Generation is counted at max_new_tokens for every row (an upper bound); the
    prompted arm skips raw-text and lm-eval suites (evals/arms.py). Not counted: loading the model for each arm,
    the judge and the toxicity scorer over the replies."""
    if not WORKLOAD.is_file():
        return None
    work = json.loads(WORKLOAD.read_text())
    # every arm loads its model afresh, so its decoder compiles again (automatic dynamic shapes: the first two
    # shapes compile, later ones reuse the dynamic graph); the sampling phase's first call shows a later shape's cost
    compile_s = (fast or {}).get("compile_seconds", 0.0)
    later_shape_s = max(0.0, (samp or {}).get("first_call_seconds", 0.0) - (samp or {}).get("seconds", 0.0))
    out: dict[str, Any] = {"workload_file": str(WORKLOAD.relative_to(WORKLOAD.parents[2])), "suites": {}}
    for path, gen_rate, samp_rate, ll_rate in (
            ("today", (hf or {}).get("new_tokens_per_s"), ((samp or {}).get("hf") or {}).get("new_tokens_per_s"),
             ((ll or {}).get("today") or {}).get("tokens_per_s")),
            ("new", (fast or {}).get("new_tokens_per_s"), (samp or {}).get("new_tokens_per_s"),
             ((ll or {}).get("new") or {}).get("tokens_per_s"))):
        if not gen_rate:
            continue
        total = 0.0
        for name, w in work["suites"].items():
            arms = w["arms"]
            gen_tokens = w.get("generation_rows", 0) * w.get("max_new_tokens", 0) * arms
            rate = samp_rate if (w.get("k", 1) > 1 and samp_rate) else gen_rate
            seconds = gen_tokens / rate
            ll_tokens = w.get("loglik_tokens_shared" if path == "new" else "loglik_tokens", w.get("loglik_tokens"))
            if ll_tokens and ll_rate:
                seconds += ll_tokens * arms / ll_rate
            out["suites"].setdefault(name, {})[path + "_seconds"] = round(seconds, 1)
            total += seconds
        if path == "new":
            arms = max(w["arms"] for w in work["suites"].values())
            compile_total = arms * (compile_s + later_shape_s * max(0, work.get("generation_shapes", 2) - 2))
            total += compile_total
            out["new_compile_seconds"] = round(compile_total, 1)
        out[path + "_total_minutes"] = round(total / 60, 2)
    return out


def git_commit() -> str | None:
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="hub id or local folder (real-model mode)")
    parser.add_argument("--shape", default=None, help="llama-3.1-8b or tiny: random weights (shape mode)")
    parser.add_argument("--suite", default="advbench_refusal", help="real-model mode: suite whose prompts to use")
    parser.add_argument("--prompts", type=int, default=512, help="prompts of the static path's timed run")
    parser.add_argument("--batch-size", type=int, default=16, help="real-model mode: hf batch size")
    parser.add_argument("--static-batch-size", "--static-batch", dest="static_batch", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    # shape mode
    parser.add_argument("--out", default="bench/results/eval_throughput.json")
    parser.add_argument("--time-budget", type=float, default=420.0, help="seconds; phases that would not fit are skipped")
    parser.add_argument("--hf-batch", type=int, default=64)
    parser.add_argument("--hf-prompts", type=int, default=192)
    parser.add_argument("--eager-prompts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--agree-prompts", type=int, default=64)
    parser.add_argument("--sample-prompts", type=int, default=64)
    parser.add_argument("--sample-k", type=int, default=25)
    parser.add_argument("--loglik-items", type=int, default=512)
    parser.add_argument("--loglik-batch", type=int, default=32)
    parser.add_argument("--loglik-big-batch", type=int, default=128)
    parser.add_argument("--prompt-mu", type=float, default=4.1, help="log of the median prompt length in words")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.shape:
        return shape_mode(args)
    args.model = args.model or "HuggingFaceTB/SmolLM2-135M-Instruct"
    args.batch_size = args.batch_size
    args.static_batch_size = args.static_batch
    return real_model(args)


if __name__ == "__main__":
    sys.exit(main())
