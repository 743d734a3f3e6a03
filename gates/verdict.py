"""KPI policy x eval summary -> verdict: does the tuned model meet every rule of every KPI?

A KPI whose metric is missing (suite not run, metric renamed) or unreadable fails with a reason that says
what is missing and what is there: the gate never passes on data it did not see.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from gates.policy import BadMetric, Measurement, describe, evaluate_rules
from harmgate.config import KPI, PolicyConfig
from harmgate.rundir import RunDir, read_json, write_json

ARMS = ("base", "tuned")


def check_summary(summary: Any, where: str = "eval summary") -> dict[str, Any]:
    """The summary's ``arms`` mapping, or a ValueError naming what is wrong."""
    if not isinstance(summary, dict) or not isinstance(summary.get("arms"), dict):
        raise ValueError(f"{where}: expected {{'arms': {{'base'|'tuned': {{suite: {{metric: {{value, n, ci95}}}}}}}}}}, "
                         f"got {type(summary).__name__} without 'arms'")
    return summary["arms"]


def _missing(arms: dict[str, Any], arm: str, metric: str) -> str | None:
    """Why ``metric`` has no ``arm`` record, or None when it has one."""
    suite, name = metric.split(".", 1)
    suites = arms.get(arm)
    if not isinstance(suites, dict) or not suites:
        return f"the {arm} arm was not evaluated (run `harmgate eval RUN_DIR --arm {arm}`)"
    if suite not in suites:
        return f"suite {suite!r} has no {arm} results (evaluated: {', '.join(sorted(suites)) or 'none'})"
    metrics = suites[suite]
    if not isinstance(metrics, dict) or name not in metrics:
        have = sorted(metrics) if isinstance(metrics, dict) else []
        return f"suite {suite!r} has no metric {name!r} in the {arm} arm (it has: {', '.join(have) or 'none'})"
    return None


def _needs_base(kpi: KPI) -> bool:
    return kpi.non_regression is not None or any(
        v is not None for v in (kpi.max_ratio_to_base, kpi.min_ratio_to_base, kpi.max_increase_over_base,
                                kpi.max_decrease_from_base))


def _record(kpi: KPI, **values: Any) -> dict[str, Any]:
    record = {"name": kpi.name, "status": None, "passed": None, "severity": kpi.severity, "reason": "",
              "metric": kpi.metric, "direction": kpi.direction, "target": kpi.target,
              "base": None, "tuned": None, "delta": None, "tuned_ci95": None, "base_ci95": None,
              "n": None, "base_n": None, "interval": None,
              "bound": "; ".join(describe(kpi)), "bounds": [], "why": kpi.reason}
    record.update(values)
    return record


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


def evaluate_kpi(kpi: KPI, summary: dict[str, Any]) -> dict[str, Any]:
    arms = check_summary(summary)
    why_missing = _missing(arms, "tuned", kpi.metric)
    if why_missing is None and _needs_base(kpi):
        why_missing = _missing(arms, "base", kpi.metric)
    if why_missing is not None:
        return _record(kpi, status="missing", passed=False,
                       reason=f"metric {kpi.metric} is missing: {why_missing}")
    suite, name = kpi.metric.split(".", 1)
    try:
        tuned = Measurement.from_record(arms["tuned"][suite][name], f"tuned {kpi.metric}")
        base = (Measurement.from_record(arms["base"][suite][name], f"base {kpi.metric}")
                if _missing(arms, "base", kpi.metric) is None else None)
    except BadMetric as err:
        return _record(kpi, status="missing", passed=False, reason=f"unreadable metric: {err}")
    rules, interval = evaluate_rules(kpi, tuned, base)
    failures = [r.detail for r in rules if not r.passed]
    passed = not failures
    return _record(
        kpi, base=None if base is None else base.value, tuned=tuned.value,
        delta=None if base is None else tuned.value - base.value,
        # The per-arm intervals the gate itself uses: Wilson for counted proportions, else the reported ci95.
        tuned_ci95=_listed(tuned.interval(0.95)),
        base_ci95=None if base is None else _listed(base.interval(0.95)),
        n=tuned.n, base_n=None if base is None else base.n,
        interval=None if interval is None else interval.as_dict(),
        bounds=[r.as_dict() for r in rules], passed=passed,
        status="pass" if passed else "fail",
        reason="; ".join(failures) if failures else "all rules met")


def decide(policy: PolicyConfig, summary: dict[str, Any]) -> dict[str, Any]:
    check_summary(summary)
    kpis = [evaluate_kpi(k, summary) for k in policy.kpis]
    blocking = [k["name"] for k in kpis if not k["passed"] and k["severity"] == "block"]
    warnings = [k["name"] for k in kpis if not k["passed"] and k["severity"] == "warn"]
    return {
        "passed": not blocking,
        "blocking_failures": blocking,
        "warnings": warnings,
        "policy": {"name": policy.name, "source": policy.source},
        "kpis": kpis,
        "decided_at": datetime.now(timezone.utc).isoformat(),
    }


def gate_run(run: RunDir) -> dict[str, Any]:
    config = run.config()
    verdict = decide(config.policy, read_json(run.eval_summary))
    verdict["run_dir"] = str(run.root)
    verdict["model_name"] = config.name
    write_json(run.verdict, verdict)
    return verdict
