"""Run every configured suite on one arm (base, tuned or prompted; evals/arms.py) and write its results into the
run directory.

Per suite: ``evals/<arm>/<suite>.json`` (metrics, breakdowns, samples, provenance; docs/RESULTS_SCHEMA.md) and
``evals/<arm>/<suite>.samples.jsonl`` (the same per-sample records, one a line). ``evals/summary.json`` holds
every arm's metrics, which the gate reads.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from evals import parallel
from evals.arms import ARMS, PROMPTED, not_applicable, resolve_arm
from evals.stats import Bootstrap
from evals.suites import SuiteContext, SuiteResult, get_suite, registered_suites
from evals.suites.sources import SourceError
from harmgate.config import RunConfig, SuiteConfig
from harmgate.rundir import RunDir, read_json, write_json, write_text_atomic

SCHEMA_VERSION = 1  # docs/RESULTS_SCHEMA.md; bump on any incompatible change to the files below


def check_suites(config: RunConfig) -> None:
    """Every suite entry is runnable as configured (names, options, sources, k vs sampling): before any model
    loads or any data is read."""
    for s in config.evals.suites:
        suite = get_suite(s.name)
        suite.check(s)
        suite.generation_config(config.evals.generation, s)
    if config.evals.generation.backend == "vllm":
        from evals.vllm_backend import check_available

        check_available()  # before hours of training, not at the first generating suite


def held_out_suites(config: RunConfig) -> list[tuple[SuiteConfig, bool]]:
    """The suites whose items the training mixture must not contain, each with whether the config runs it: the
    configured ones, plus every registered suite held out always (``Suite.always_held_out``) at its defaults."""
    check_suites(config)
    names = {s.name for s in config.evals.suites}
    return [(s, True) for s in config.evals.suites] + [
        (SuiteConfig(name=n), False) for n in registered_suites() if n not in names and get_suite(n).always_held_out]


def eval_prompts(config: RunConfig) -> list[str]:
    """Every user prompt any held-out suite asks or scores, and every fixed text a suite wraps its prompts in
    (attack_robustness's templates): the training mixture must not contain them (align/leakcheck.py: a user turn
    that is one, or contains one). This also holds hh_preference's and helpfulness's items, and
    attack_robustness's whole pool, out of training."""
    texts: list[str] = []
    for s, configured in held_out_suites(config):
        try:
            texts.extend(get_suite(s.name).eval_prompts(s, config.data.mirror))
        except SourceError as err:
            if configured:
                raise
            # A standing hold-out whose data this mirror lacks: nothing of it can be read from here either.
            warnings.warn(f"held-out suite {s.name} not checked for leaks: {err}", stacklevel=2)
    return texts


def default_toxicity_factory(config: RunConfig) -> Callable[[], Any]:
    def build():
        from evals.scorers import load_toxicity_scorer

        return load_toxicity_scorer(config.evals.toxicity_scorer)
    return build


def default_judge_factory(config: RunConfig) -> Callable[[], Any]:
    def build():
        from evals.judge import load_judge

        return load_judge(config.evals.judge)
    return build


def strict_json(value: Any) -> Any:
    """NaN/inf -> None anywhere in ``value``: the result files are strict JSON (docs/RESULTS_SCHEMA.md)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def samples_path(run: RunDir, arm: str, suite: str) -> Path:
    return run.eval_result(arm, suite).with_suffix(".samples.jsonl")


def write_samples(path: Path, samples: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(s, ensure_ascii=False, default=str, allow_nan=False) + "\n"
                                    for s in samples))


def run_suite(model, tokenizer, suite_cfg: SuiteConfig, config: RunConfig, *, desc: str = "",
              work_dir: Path | None = None, toxicity_factory: Callable[[], Any] | None = None,
              judge_factory: Callable[[], Any] | None = None,
              system_prompt: str | None = None) -> tuple[SuiteResult, dict[str, Any]]:
    """One suite on one loaded model (told ``system_prompt`` first, if given): its result and its settings."""
    suite = get_suite(suite_cfg.name)
    gen = suite.generation_config(config.evals.generation, suite_cfg)
    ctx = SuiteContext(mirror=config.data.mirror, generation=gen, boot=Bootstrap(seed=suite_cfg.seed),
                       toxicity_factory=toxicity_factory or default_toxicity_factory(config),
                       judge_factory=judge_factory or default_judge_factory(config), work_dir=work_dir,
                       desc=desc or suite.name, system_prompt=system_prompt)
    result = suite.run(model, tokenizer, suite_cfg, ctx)
    settings = {"kind": suite.kind, "limit": suite_cfg.limit, "seed": suite_cfg.seed, "k": suite_cfg.k,
                "options": suite.options(suite_cfg).model_dump(),
                "generation": gen.model_dump() if suite.kind != "likelihood" else None,
                "prompt_format": getattr(suite.options(suite_cfg), "prompt_format", suite.prompt_format),
                "system_prompt": system_prompt, "ci": ctx.boot.describe()}
    return result, settings


def load_arm_model(ref: str, loaded: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for ``ref``. With ``loaded`` (one dict over a stage's arms), an arm on the model the
    previous arm used (base, then prompted) reuses it, compiled decode graphs included; another model replaces it."""
    import torch

    from align.models import load_causal_lm, load_tokenizer

    if loaded is not None and loaded.get("ref") == ref:
        return loaded["model"], loaded["tokenizer"]
    if loaded:
        loaded.clear()  # one model at a time: release the previous arm's before loading the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    on_gpu = torch.cuda.is_available()
    # one process: GPU 0; under accelerate launch / torchrun (evals/parallel.py): each process its own GPU
    model = load_causal_lm(ref, dtype="bfloat16" if on_gpu else "float32", device_map=parallel.device_map())
    model.eval()
    tokenizer = load_tokenizer(ref)
    if loaded is not None:
        loaded.update(ref=ref, model=model, tokenizer=tokenizer)
    return model, tokenizer


def arm_order(run: RunDir, config: RunConfig, arms: tuple[str, ...]) -> tuple[str, ...]:
    """``arms`` with those on one model next to each other (base, prompted, tuned), so each model loads once."""
    refs = {a: resolve_arm(run, config, a).model_ref if a != "tuned" else str(run.merged_model_dir) for a in arms}
    first = {}
    for a in arms:
        first.setdefault(refs[a], len(first))
    return tuple(sorted(arms, key=lambda a: (first[refs[a]], arms.index(a))))


def evaluate_arm(run: RunDir, config: RunConfig, arm: str, *, toxicity_factory: Callable[[], Any] | None = None,
                 judge_factory: Callable[[], Any] | None = None, loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every configured suite on one arm. ``loaded``: see :func:`load_arm_model`."""
    check_suites(config)
    spec = resolve_arm(run, config, arm)
    ref = spec.model_ref
    skip = not_applicable(config) if arm == PROMPTED else {}
    model, tokenizer = load_arm_model(ref, loaded)
    # One factory call per arm: the scorer/judge are built once and shared by the suites that need them.
    shared: dict[str, Any] = {}
    tox = toxicity_factory or default_toxicity_factory(config)

    def cached(key: str, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        if factory is None:
            return None
        return lambda: shared[key] if key in shared else shared.setdefault(key, factory())

    results: dict[str, Any] = {}
    for suite_cfg in config.evals.suites:
        name = suite_cfg.name
        if name in skip:
            if parallel.is_main():  # a stale file from an older config must not count
                run.eval_result(arm, name).unlink(missing_ok=True)
            continue
        started = time.time()
        result, settings = run_suite(model, tokenizer, suite_cfg, config, desc=f"{arm}/{name}",
                                     work_dir=run.root / "evals" / arm / f"{name}.work",
                                     toxicity_factory=cached("toxicity", tox),
                                     judge_factory=cached("judge", judge_factory or default_judge_factory(config)),
                                     system_prompt=spec.system_prompt)
        suite = get_suite(name)
        jsonl = samples_path(run, arm, name)
        payload = {
            "schema_version": SCHEMA_VERSION, "suite": name, "arm": arm, "model": ref,
            "description": suite.description, **settings,
            "sources": result.info.pop("sources", []),
            "seconds": round(time.time() - started, 2),
            "metrics": result.metrics, "breakdowns": result.breakdowns, "info": result.info,
            "metric_notes": {m: suite.metrics_doc.get(m, "") for m in result.metrics},
            "samples_file": jsonl.name, "samples": result.samples,
        }
        payload = strict_json(payload)
        if parallel.is_main():  # every process holds the same results; one writes them
            write_samples(jsonl, payload["samples"])
            write_json(run.eval_result(arm, name), payload)
        results[name] = payload["metrics"]
    parallel.barrier()  # the files exist for every process before anyone reads them (write_summary)
    return results


def write_summary(run: RunDir, config: RunConfig) -> dict[str, Any]:
    """Every evaluated arm's metrics; ``arm_settings`` says what the prompted arm was (model, system prompt,
    suites it skipped and why)."""
    summary: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "arms": {}}
    arms = ARMS if config.evals.prompted_arm.enabled else tuple(a for a in ARMS if a != PROMPTED)
    for arm in arms:
        arm_metrics = {}
        for suite in config.evals.suites:
            path = run.eval_result(arm, suite.name)
            if path.is_file():
                arm_metrics[suite.name] = read_json(path)["metrics"]
        if arm_metrics:
            summary["arms"][arm] = arm_metrics
    if PROMPTED in summary["arms"]:
        summary["arm_settings"] = {PROMPTED: {**resolve_arm(run, config, PROMPTED).describe(),
                                              "not_applicable": not_applicable(config)}}
    if parallel.is_main():
        write_json(run.eval_summary, summary)
    return summary
