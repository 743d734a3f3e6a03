"""KPI policy x eval summary -> verdict: does the tuned model meet every rule of every KPI?

A KPI whose metric is missing (suite not run, metric renamed) or unreadable fails with a reason that says
what is missing and what is there: the gate never passes on data it did not see.

When the summary has a ``prompted`` arm (the base model with a safety system prompt), every KPI record also
carries that arm's value, and the verdict says whether the prompted base alone would pass the same policy
(``prompted_alone``): the question a team asks before fine-tuning at all.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from gates.policy import BadMetric, Measurement, describe, difference_interval, evaluate_rules
from harmgate.config import KPI, PolicyConfig
from harmgate.rundir import RunDir, read_json, write_json

PROMPTED = "prompted"


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
        enable = "set evals.prompted_arm.enabled: true and " if arm == PROMPTED else ""
        return f"the {arm} arm was not evaluated ({enable}run `harmgate eval RUN_DIR --arm {arm}`)"
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
              "prompted": None, "prompted_ci95": None, "prompted_n": None, "delta_vs_prompted": None,
              "interval_vs_prompted": None,
              "bound": "; ".join(describe(kpi)), "bounds": [], "why": kpi.reason}
    record.update(values)
    return record


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


def _skipped_by_arm(summary: dict[str, Any], arm: str, metric: str) -> str | None:
    """Why ``arm`` did not run the metric's suite on purpose (the prompted arm skips raw-text suites)."""
    settings = summary.get("arm_settings") if isinstance(summary.get("arm_settings"), dict) else {}
    skipped = (settings.get(arm) or {}).get("not_applicable") if isinstance(settings.get(arm), dict) else None
    suite = metric.split(".", 1)[0]
    if isinstance(skipped, dict) and suite in skipped:
        return f"the {arm} arm does not run suite {suite!r}: {skipped[suite]}"
    return None


def _arm_value(arms: dict[str, Any], arm: str, metric: str) -> Measurement | None:
    if _missing(arms, arm, metric) is not None:
        return None
    suite, name = metric.split(".", 1)
    return Measurement.from_record(arms[arm][suite][name], f"{arm} {metric}")


def evaluate_kpi(kpi: KPI, summary: dict[str, Any]) -> dict[str, Any]:
    arms = check_summary(summary)
    why_missing = _missing(arms, "tuned", kpi.metric)
    if why_missing is None and _needs_base(kpi):
        why_missing = _missing(arms, "base", kpi.metric)
    if why_missing is None and kpi.beats_arm is not None:
        why_missing = (_skipped_by_arm(summary, kpi.beats_arm.arm, kpi.metric)
                       or _missing(arms, kpi.beats_arm.arm, kpi.metric))
    if why_missing is not None:
        return _record(kpi, status="missing", passed=False,
                       reason=f"metric {kpi.metric} is missing: {why_missing}")
    try:
        tuned = _arm_value(arms, "tuned", kpi.metric)
        base = _arm_value(arms, "base", kpi.metric)
        prompted = _arm_value(arms, PROMPTED, kpi.metric)
    except BadMetric as err:
        return _record(kpi, status="missing", passed=False, reason=f"unreadable metric: {err}")
    assert tuned is not None
    rules, interval = evaluate_rules(kpi, tuned, base, {PROMPTED: prompted})
    failures = [r.detail for r in rules if not r.passed]
    passed = not failures
    vs_prompted = None if prompted is None else difference_interval(tuned, prompted, 0.95, kpi.target)
    return _record(
        kpi, prompted=None if prompted is None else prompted.value,
        prompted_ci95=None if prompted is None else _listed(prompted.interval(0.95)),
        prompted_n=None if prompted is None else prompted.n,
        delta_vs_prompted=None if prompted is None else tuned.value - prompted.value,
        interval_vs_prompted=None if vs_prompted is None else vs_prompted.as_dict(),
        base=None if base is None else base.value, tuned=tuned.value,
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
        "prompted_alone": prompted_alone(policy, summary),
        "decided_at": datetime.now(timezone.utc).isoformat(),
    }


def prompted_alone(policy: PolicyConfig, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The same policy applied to the prompted base as if it were the candidate (None: no prompted arm).

    Suites the prompted arm skips (a system prompt cannot change them) count with the base model's values.
    KPIs whose only rule is ``beats_arm`` do not apply (status ``n/a``); that rule is dropped from the others.
    """
    arms = check_summary(summary)
    if not isinstance(arms.get(PROMPTED), dict) or not arms[PROMPTED]:
        return None
    settings = summary.get("arm_settings") if isinstance(summary.get("arm_settings"), dict) else {}
    skipped = ((settings.get(PROMPTED) or {}).get("not_applicable") or {}) if isinstance(
        settings.get(PROMPTED), dict) else {}
    candidate = dict(arms[PROMPTED])
    for suite in skipped:
        if isinstance(arms.get("base"), dict) and suite in arms["base"]:
            candidate[suite] = arms["base"][suite]
    as_tuned = {"arms": {"base": arms.get("base") or {}, "tuned": candidate}}
    rows = []
    for kpi in policy.kpis:
        if kpi.beats_arm is not None and kpi.beats_arm.arm == PROMPTED:
            others = kpi.model_dump(exclude={"beats_arm"})
            if not any(others.get(k) is not None for k in ("max", "min", "max_ratio_to_base", "min_ratio_to_base",
                                                            "max_increase_over_base", "max_decrease_from_base",
                                                            "non_regression")):
                rows.append({"name": kpi.name, "status": "n/a", "passed": None, "severity": kpi.severity,
                             "value": None, "reason": "only compares tuned with the prompted arm"})
                continue
            kpi = KPI.model_validate(others)
        r = evaluate_kpi(kpi, as_tuned)
        rows.append({"name": kpi.name, "status": r["status"], "passed": r["passed"], "severity": kpi.severity,
                     "value": r["tuned"], "reason": r["reason"],
                     "from_base": kpi.metric.split(".", 1)[0] in skipped})
    blocking = [r["name"] for r in rows if r["passed"] is False and r["severity"] == "block"]
    return {"passed": not blocking, "blocking_failures": blocking, "kpis": rows,
            "note": "the policy applied to the base model with the safety system prompt, as if it were the candidate"}


def gate_run(run: RunDir) -> dict[str, Any]:
    config = run.config()
    verdict = decide(config.policy, read_json(run.eval_summary))
    verdict["run_dir"] = str(run.root)
    verdict["model_name"] = config.name
    write_json(run.verdict, verdict)
    return verdict
