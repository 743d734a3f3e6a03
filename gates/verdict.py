"""KPI policy -> verdict: does the tuned model meet every bound, absolute and relative to its base?"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from harmgate.config import KPI, PolicyConfig
from harmgate.rundir import RunDir, read_json, write_json


class MissingMetric(KeyError):
    pass


def lookup_metric(summary: dict[str, Any], arm: str, metric: str) -> dict[str, Any]:
    suite, name = metric.split(".", 1)
    try:
        return summary["arms"][arm][suite][name]
    except KeyError:
        have = sorted(f"{s}.{m}" for s, ms in summary.get("arms", {}).get(arm, {}).items() for m in ms)
        raise MissingMetric(f"metric {metric!r} has no {arm} value in the eval summary (have: {have}); "
                            f"is suite {suite!r} in evals.suites?") from None


def _bounds(kpi: KPI, base: float | None) -> list[tuple[str, str, float]]:
    """(description, comparison, threshold) for every bound the KPI sets."""
    bounds: list[tuple[str, str, float]] = []
    if kpi.max is not None:
        bounds.append((f"<= {kpi.max:g}", "<=", kpi.max))
    if kpi.min is not None:
        bounds.append((f">= {kpi.min:g}", ">=", kpi.min))
    if base is not None:
        if kpi.max_ratio_to_base is not None:
            bounds.append((f"<= {kpi.max_ratio_to_base:g} x base", "<=", kpi.max_ratio_to_base * base))
        if kpi.min_ratio_to_base is not None:
            bounds.append((f">= {kpi.min_ratio_to_base:g} x base", ">=", kpi.min_ratio_to_base * base))
        if kpi.max_increase_over_base is not None:
            bounds.append((f"<= base + {kpi.max_increase_over_base:g}", "<=", base + kpi.max_increase_over_base))
        if kpi.max_decrease_from_base is not None:
            bounds.append((f">= base - {kpi.max_decrease_from_base:g}", ">=", base - kpi.max_decrease_from_base))
    return bounds


def evaluate_kpi(kpi: KPI, summary: dict[str, Any]) -> dict[str, Any]:
    tuned = lookup_metric(summary, "tuned", kpi.metric)
    needs_base = any(b is not None for b in (kpi.max_ratio_to_base, kpi.min_ratio_to_base,
                                              kpi.max_increase_over_base, kpi.max_decrease_from_base))
    base = lookup_metric(summary, "base", kpi.metric) if needs_base else _optional(summary, kpi.metric)
    t, b = tuned["value"], (base or {}).get("value")
    failures = []
    checked = []
    for desc, op, threshold in _bounds(kpi, b):
        ok = t <= threshold + 1e-12 if op == "<=" else t >= threshold - 1e-12
        checked.append({"bound": desc, "threshold": threshold, "passed": ok})
        if not ok:
            failures.append(f"{kpi.metric} = {t:.4g} violates {desc} (threshold {threshold:.4g})")
    passed = not failures
    return {
        "name": kpi.name, "metric": kpi.metric, "direction": kpi.direction, "severity": kpi.severity,
        "base": b, "tuned": t, "delta": (t - b) if b is not None else None,
        "tuned_ci95": tuned.get("ci95"), "base_ci95": (base or {}).get("ci95"),
        "n": tuned.get("n"), "bounds": checked, "passed": passed,
        "reason": "; ".join(failures) if failures else "all bounds met", "why": kpi.reason,
    }


def _optional(summary: dict[str, Any], metric: str) -> dict[str, Any] | None:
    try:
        return lookup_metric(summary, "base", metric)
    except MissingMetric:
        return None


def decide(policy: PolicyConfig, summary: dict[str, Any]) -> dict[str, Any]:
    kpis = [evaluate_kpi(k, summary) for k in policy.kpis]
    blocking = [k["name"] for k in kpis if not k["passed"] and k["severity"] == "block"]
    warnings = [k["name"] for k in kpis if not k["passed"] and k["severity"] == "warn"]
    return {
        "passed": not blocking,
        "blocking_failures": blocking,
        "warnings": warnings,
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
