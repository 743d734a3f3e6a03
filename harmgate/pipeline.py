"""The stages, in the one order data flows: data -> train -> merge -> eval -> gate -> publish.

Each stage reads the previous stage's artifacts from the run directory and writes its own, so any stage can be
rerun alone (`harmgate eval RUN_DIR` after changing a suite, say). This module only sequences them and reports
what happened; the work lives in align/, evals/ and gates/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from harmgate.config import RunConfig
from harmgate.rundir import RunDir

STAGES = ("data", "train", "merge", "eval", "gate", "publish")


class PreflightError(ValueError):
    pass


@dataclass
class StageReport:
    stage: str
    seconds: float
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def preflight(config: RunConfig, *, publish: bool = False) -> None:
    """Catch what would otherwise fail after an hour of training: unknown suites, KPIs reading nothing, and (when
    the run publishes) no usable signing key or trust file."""
    from evals.suites import get_suite

    problems = []
    suite_names = {s.name for s in config.evals.suites}
    for s in config.evals.suites:
        try:
            get_suite(s.name)
        except KeyError as err:
            problems.append(f"evals.suites: {err.args[0]}")
    for i, kpi in enumerate(config.policy.kpis):
        suite = kpi.metric.split(".", 1)[0]
        if suite not in suite_names:
            problems.append(f"policy.kpis[{i}] ({kpi.name}): metric {kpi.metric!r} reads suite {suite!r}, "
                            f"which is not in evals.suites {sorted(suite_names)}")
    problems += _prompted_arm_problems(config)
    problems += _starting_point_problems(config)
    if publish:
        problems += _signing_problems(config)
    if problems:
        raise PreflightError("config cannot run:\n  " + "\n  ".join(problems))


def _signing_problems(config: RunConfig) -> list[str]:
    """The publish stage signs with the private key and checks it against the trust file: both must work now."""
    from harmgate.objectstore import RegistryError
    from gates.signer import check_can_sign, load_signing_key
    from gates.trust import load_trust

    try:
        check_can_sign(load_signing_key(config.store), load_trust(config.store))
    except RegistryError as err:
        return [f"publish: {err}"]
    return []


def _starting_point_problems(config: RunConfig) -> list[str]:
    """model.init_from must name a usable fine-tune of the base now, not after the data stage's sampling."""
    if config.model.init_from is None:
        return []
    from align.models import ModelLoadError
    from align.start import StartingPointError, starting_folder

    try:
        starting_folder(config)  # configs only: the weights are hashed when training starts
    except (StartingPointError, ModelLoadError, OSError) as err:
        return [str(err)]
    return []


def _prompted_arm_problems(config: RunConfig) -> list[str]:
    """A KPI that must beat the prompted arm needs that arm evaluated, on a suite a system prompt can change."""
    from evals.arms import PROMPTED, not_applicable

    wanted = [(i, k) for i, k in enumerate(config.policy.kpis) if k.beats_arm and k.beats_arm.arm == PROMPTED]
    if not wanted:
        return []
    if not config.evals.prompted_arm.enabled:
        return [f"policy.kpis[{i}] ({k.name}): beats_arm: prompted needs evals.prompted_arm.enabled: true"
                for i, k in wanted]
    try:
        skipped = not_applicable(config)
    except KeyError:  # an unknown suite, reported above
        return []
    return [f"policy.kpis[{i}] ({k.name}): beats_arm: prompted on suite {k.metric.split('.', 1)[0]!r}, which the "
            f"prompted arm does not run ({skipped[k.metric.split('.', 1)[0]]})"
            for i, k in wanted if k.metric.split(".", 1)[0] in skipped]


def stage_data(run: RunDir, config: RunConfig) -> StageReport:
    from align.mixture import build_mixture, write_mixture
    from evals.runner import eval_prompts

    started = time.time()
    synthesizer = _synthesizer(run, config) if any(s.format == "prompt" for s in config.data.sources) else None
    mixture = build_mixture(config.data, eval_prompts=eval_prompts(config), synthesizer=synthesizer)
    write_mixture(mixture, run)
    m = mixture.manifest
    skipped = {s["id"]: s.get("skipped", {}) for s in m.get("sources", [])}
    return StageReport("data", time.time() - started,
                       f"{len(mixture.examples)} training examples from {len(config.data.sources)} source(s); "
                       f"skipped rows by reason: {skipped}", {"manifest": str(run.data_manifest)})


def _without_bos(tokenizer, text: str) -> str:
    """A rendered chat without its leading BOS when the tokenizer adds one itself (Llama 3), so a raw-text
    continuation of it does not start with two."""
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x", add_special_tokens=True).input_ids[:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos and text.startswith(bos) else text


def _synthesizer(run: RunDir, config: RunConfig):
    """align.synthesis with the real instruments: the model training starts from samples (the base, or
    model.init_from: on-policy for the model being tuned), the gate's judge and toxicity scorer accept or reject
    (built lazily: a rerun whose samples are all cached loads nothing)."""
    import torch

    from align.models import load_causal_lm, load_tokenizer
    from align.start import starting_point
    from align.synthesis import Synthesizer
    from evals.generate import generate, render_prompts
    from evals.runner import default_toxicity_factory
    from harmgate.config import GenerationConfig

    loaded: dict[str, Any] = {}
    start = starting_point(config)

    def model():
        if "model" not in loaded:
            on_gpu = torch.cuda.is_available()
            loaded["model"] = load_causal_lm(start.ref, revision=start.revision,
                                             dtype="bfloat16" if on_gpu else "float32",
                                             device_map={"": 0} if on_gpu else None).eval()
            loaded["tokenizer"] = load_tokenizer(config.model.base, config.model.revision)
        return loaded["model"], loaded["tokenizer"]

    syn = config.data.synthesis
    gen = GenerationConfig(max_new_tokens=syn.max_new_tokens, batch_size=syn.batch_size,
                           temperature=syn.temperature, top_p=syn.top_p)

    def sample(prompts, *, system_prompt, k, seed, prefills=None):
        m, tok = model()
        if not prefills:
            return generate(m, tok, prompts, gen, k=k, seed=seed, system_prompt=system_prompt,
                            desc="sampling training replies")
        # A prefilled assistant turn: render the chat, append the opener, continue it as raw text.
        texts = [_without_bos(tok, t) + opener
                 for t, opener in zip(render_prompts(tok, prompts, system_prompt), prefills)]
        outs = generate(m, tok, texts, gen, k=k, seed=seed, chat=False, desc="sampling training replies")
        return [[(opener + o).strip() for o in per] for opener, per in zip(prefills, outs)]

    def judge_model():
        if "judge" not in loaded:
            from evals.judge import load_judge
            loaded["judge"] = load_judge(config.evals.judge)
        return loaded["judge"]

    def scorer_model():
        if "tox" not in loaded:
            loaded["tox"] = default_toxicity_factory(config)()
        return loaded["tox"]

    def judge(prompts, replies):
        return [j.label for j in judge_model().judge_many(list(replies), list(prompts))]

    def toxicity(texts):
        return [float(x) for x in scorer_model().score(list(texts))]

    def instruments() -> str:
        return f"{judge_model().name}|{scorer_model().name}"  # both names carry their weights' fingerprints

    return Synthesizer(sample=sample, judge=judge, toxicity=toxicity, config=syn, model_id=start.identity,
                       cache_path=Path(syn.cache) if syn.cache else run.root / "data" / "synthesis.jsonl",
                       seed=config.data.seed, instruments=instruments)


def _loss_text(metrics: dict[str, Any]) -> str:
    curve = metrics.get("loss_curve") or []
    if not curve:  # fewer steps than training.logging_steps: the Trainer logged only its summary
        loss = metrics.get("train_loss")
        return f"mean loss {float(loss):.3f} (no step logged)" if loss is not None else "no loss logged"
    return f"loss {curve[0]['loss']:.3f} -> {metrics['final_loss']:.3f}"


def stage_train(run: RunDir, config: RunConfig) -> StageReport:
    from align.train import train

    started = time.time()
    metrics = train(run, config)
    tokens = "tokens not counted" if metrics.get("tokens_seen") is None else f"{metrics['tokens_seen']} tokens"
    return StageReport("train", time.time() - started,
                       f"{config.describe_training()}: {metrics['global_steps']} steps, "
                       f"{_loss_text(metrics)}, "
                       f"{tokens} in {metrics['wall_seconds']:.0f} s",
                       {"adapter": str(run.adapter_dir)})


def stage_merge(run: RunDir, config: RunConfig) -> StageReport:
    from align.merge import merge_adapter

    started = time.time()
    path = merge_adapter(run, config)
    return StageReport("merge", time.time() - started, f"merged model saved to {path}")


def stage_eval(run: RunDir, config: RunConfig, arms: tuple[str, ...] | None = None) -> StageReport:
    """``arms``: default base and tuned, plus prompted when evals.prompted_arm is enabled."""
    from evals.arms import configured_arms
    from evals.runner import arm_order, evaluate_arm, write_summary

    started = time.time()
    loaded: dict = {}  # base and prompted share one loaded model (and its compiled decode graphs)
    for arm in arm_order(run, config, tuple(arms or configured_arms(config))):
        evaluate_arm(run, config, arm, loaded=loaded)
    loaded.clear()
    summary = write_summary(run, config)
    parts = []
    for suite in config.evals.suites:
        for metric in summary["arms"].get("tuned", summary["arms"].get("base", {})).get(suite.name, {}):
            vals = [f"{arm} {_fmt(summary['arms'][arm][suite.name].get(metric, {}).get('value'))}"
                    for arm in summary["arms"] if suite.name in summary["arms"][arm]]
            parts.append(f"{suite.name}.{metric}: {', '.join(vals)}")
    return StageReport("eval", time.time() - started, "; ".join(parts), {"summary": str(run.eval_summary)})


def _fmt(value: Any) -> str:
    """A metric for the stage line; undefined metrics (e.g. a gap over one group) are null, not a crash."""
    return "n/a" if value is None else f"{value:.3f}"


def stage_gate(run: RunDir, config: RunConfig) -> StageReport:
    from gates.verdict import gate_run

    started = time.time()
    verdict = gate_run(run)
    if verdict["passed"]:
        text = f"PASSED: all {len(verdict['kpis'])} blocking KPIs met"
    else:
        text = "BLOCKED by " + "; ".join(k["reason"] for k in verdict["kpis"] if not k["passed"] and k["severity"] == "block")
    return StageReport("gate", time.time() - started, text, {"verdict": verdict})


def stage_publish(run: RunDir, config: RunConfig) -> StageReport:
    from gates.publish import publish_run

    started = time.time()
    record = publish_run(run)
    return StageReport("publish", time.time() - started,
                       f"published {record['name']} {record['version']} to s3://{record['bucket']} (approved)", record)


STAGE_FUNCS: dict[str, Callable[[RunDir, RunConfig], StageReport]] = {
    "data": stage_data, "train": stage_train, "merge": stage_merge,
    "eval": stage_eval, "gate": stage_gate, "publish": stage_publish,
}


def run_pipeline(run: RunDir, config: RunConfig, *, stages: tuple[str, ...] = STAGES,
                 console: Console | None = None) -> list[StageReport]:
    """Run ``stages`` in order; publish runs only when the gate passed (a failed gate is not an error here)."""
    console = console or Console()
    preflight(config, publish="publish" in stages)
    reports: list[StageReport] = []
    for name in STAGES:
        if name not in stages:
            continue
        if name == "publish" and reports and reports[-1].stage == "gate" and not reports[-1].details["verdict"]["passed"]:
            console.print("[bold red]publish[/]: skipped: the gate blocked this model, nothing is uploaded")
            reports.append(StageReport("publish", 0.0, "skipped: gate blocked"))
            continue
        console.rule(f"[bold]{name}")
        report = STAGE_FUNCS[name](run, config)
        style = "red" if name == "gate" and not report.details["verdict"]["passed"] else "green"
        console.print(f"[bold {style}]{name}[/] ({report.seconds:.0f} s): {report.summary}")
        reports.append(report)
    return reports
