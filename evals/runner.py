"""Run every configured suite on one arm (base or tuned) and write its results into the run directory."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from evals.generate import generate_replies
from evals.suites import EvalItem, get_suite
from harmgate.config import RunConfig
from harmgate.rundir import RunDir, read_json, write_json

ARMS = ("base", "tuned")


def load_eval_items(config: RunConfig) -> dict[str, list[EvalItem]]:
    return {s.name: get_suite(s.name).load(s, config.data.mirror) for s in config.evals.suites}


def eval_prompts(config: RunConfig) -> list[str]:
    """Every prompt any suite will ask: the training mixture must not contain them."""
    return [item.prompt for items in load_eval_items(config).values() for item in items]


def model_ref_for_arm(run: RunDir, config: RunConfig, arm: str) -> str:
    if arm == "base":
        return config.model.base
    if arm == "tuned":
        if not (run.merged_model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no merged model at {run.merged_model_dir}: run `harmgate train {run.root}`")
        return str(run.merged_model_dir)
    raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")


def evaluate_arm(run: RunDir, config: RunConfig, arm: str) -> dict[str, Any]:
    import torch

    from align.models import load_causal_lm, load_tokenizer

    ref = model_ref_for_arm(run, config, arm)
    on_gpu = torch.cuda.is_available()
    model = load_causal_lm(ref, dtype="bfloat16" if on_gpu else "float32", device_map={"": 0} if on_gpu else None)
    model.eval()
    tokenizer = load_tokenizer(ref)
    results: dict[str, Any] = {}
    for suite_cfg, (name, items) in zip(config.evals.suites, load_eval_items(config).items()):
        suite = get_suite(name)
        started = time.time()
        replies = generate_replies(model, tokenizer, [it.prompt for it in items], config.evals.generation,
                                   desc=f"{arm}/{name}")
        scored = suite.score(items, replies)
        payload = {
            "suite": name, "arm": arm, "model": ref, "source": suite_cfg.source or suite.default_source,
            "limit": suite_cfg.limit, "seed": suite_cfg.seed,
            "generation": config.evals.generation.model_dump(),
            "seconds": round(time.time() - started, 2),
            **asdict(scored),
        }
        write_json(run.eval_result(arm, name), payload)
        results[name] = payload["metrics"]
    return results


def write_summary(run: RunDir, config: RunConfig) -> dict[str, Any]:
    summary: dict[str, Any] = {"arms": {}}
    for arm in ARMS:
        arm_metrics = {}
        for suite in config.evals.suites:
            path = run.eval_result(arm, suite.name)
            if path.is_file():
                arm_metrics[suite.name] = read_json(path)["metrics"]
        if arm_metrics:
            summary["arms"][arm] = arm_metrics
    write_json(run.eval_summary, summary)
    return summary
