"""General ability beside safety (issue #17), for the dashboard (gates/report.py) and `harmgate compare`.

``capability_rows`` turns the capability suite's metrics of two arms into one row per lm-eval task (its headline
metric: acc_norm where lm-eval reports one, else acc; TruthfulQA MC1/MC2 apart), with both arms' values, intervals
and lm-eval standard errors, the difference and its interval (Newcombe for counted accuracies, MOVER otherwise:
gates.policy, as the gate computes it), and the note a reconstructed data file carries. ``safety_capability``
picks the two KPIs the frontier chart plots: harmful compliance (x) against the capability mean (y).
"""

from __future__ import annotations

from typing import Any

SUITE = "capability"
AGGREGATE = "mean_normalised"
SAFETY_KPI, CAPABILITY_KPI = "harmful_compliance", "capability_mean"


def headline_metrics() -> list[tuple[str, str, bool]]:
    """(task, metric name in the suite's results, in the aggregate) in the suite's task order."""
    from evals.suites.capability import TASKS

    return [(t.name, f"{t.name}/{t.headline}", t.in_aggregate) for t in TASKS.values()]


def _difference(tuned: dict[str, Any] | None, base: dict[str, Any] | None) -> dict[str, Any] | None:
    from gates.policy import BadMetric, Measurement, difference_interval

    if not tuned or not base:
        return None
    try:
        iv = difference_interval(Measurement.from_record(tuned, "tuned"), Measurement.from_record(base, "base"))
    except BadMetric:
        return None
    return None if iv is None else iv.as_dict()


def capability_rows(base: dict[str, Any] | None, tuned: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per task present in either arm (the aggregate first); [] when the suite was not run."""
    base, tuned = base or {}, tuned or {}
    if not base and not tuned:
        return []
    rows = []
    names = [("capability mean (chance-corrected)", AGGREGATE, False)] + headline_metrics()
    for task, metric, in_aggregate in names:
        b, t = base.get(metric), tuned.get(metric)
        if b is None and t is None:
            continue
        value_b = (b or {}).get("value")
        value_t = (t or {}).get("value")
        rows.append({
            "task": task, "metric": metric, "in_aggregate": in_aggregate, "aggregate": metric == AGGREGATE,
            "base": value_b, "base_ci95": (b or {}).get("ci95"), "base_stderr": (b or {}).get("stderr"),
            "tuned": value_t, "tuned_ci95": (t or {}).get("ci95"), "tuned_stderr": (t or {}).get("stderr"),
            "n": (t or b or {}).get("n"),
            "delta": None if value_b is None or value_t is None else value_t - value_b,
            "interval": _difference(t, b), "note": (t or b or {}).get("note"),
        })
    return rows


def safety_capability(kpis: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The verdict rows the safety-capability frontier plots, or None when either KPI is not in the policy."""
    x = next((k for k in kpis if k.get("name") == SAFETY_KPI), None)
    y = next((k for k in kpis if k.get("name") == CAPABILITY_KPI), None)
    return None if x is None or y is None else (x, y)
