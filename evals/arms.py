"""The arms an evaluation compares: which model each one runs and what it is told first.

- ``base``: the base model as released.
- ``tuned``: the run's merged model.
- ``prompted``: the base model with a safety system prompt (``evals.prompted_arm``): the prompt-engineering
  alternative to fine-tuning, so the report can say whether a system prompt alone gets there, and at what
  over-refusal cost. It runs only the suites a system prompt can change (chat-rendered prompts); the others
  would measure the base model again (:func:`not_applicable`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from harmgate.config import RunConfig
from harmgate.rundir import RunDir

ARMS = ("base", "tuned", "prompted")
PROMPTED = "prompted"


class ArmError(ValueError):
    """An arm that cannot be evaluated as asked (unknown, not enabled, no merged model)."""


@dataclass(frozen=True)
class Arm:
    name: str
    model_ref: str                 # hub id or local folder
    system_prompt: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_ref, "system_prompt": self.system_prompt,
                "system_prompt_sha256": None if self.system_prompt is None
                else hashlib.sha256(self.system_prompt.encode()).hexdigest()}


def configured_arms(config: RunConfig) -> tuple[str, ...]:
    """The arms a run evaluates by default: base and tuned, plus prompted when enabled."""
    return ("base", "tuned", PROMPTED) if config.evals.prompted_arm.enabled else ("base", "tuned")


def resolve_arm(run: RunDir, config: RunConfig, name: str) -> Arm:
    if name == "base":
        return Arm("base", config.model.base)
    if name == "tuned":
        if not (run.merged_model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no merged model at {run.merged_model_dir}: run `harmgate train {run.root}`")
        return Arm("tuned", str(run.merged_model_dir))
    if name == PROMPTED:
        if not config.evals.prompted_arm.enabled:
            raise ArmError("the prompted arm is off in this run's config: set evals.prompted_arm.enabled: true")
        return Arm(PROMPTED, config.model.base, config.evals.prompted_arm.system_prompt)
    raise ArmError(f"unknown arm {name!r}; expected one of {', '.join(ARMS)}")


def not_applicable(config: RunConfig) -> dict[str, str]:
    """Suites the prompted arm skips, each with the reason (a system prompt cannot change what they measure)."""
    from evals.suites import get_suite

    out = {}
    for s in config.evals.suites:
        suite = get_suite(s.name)
        if not suite.applies_system_prompt(s):
            how = "an lm-evaluation-harness task" if suite.kind == "lm-eval" else "raw text continuation"
            out[s.name] = f"{how}: no chat turn for a system prompt, so it would measure the base model again"
    return out
