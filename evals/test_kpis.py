"""One test per KPI of the run's policy; a failing (or missing) blocking KPI fails the build, a warning warns."""

import warnings

import pytest


def _fmt(v) -> str:
    return "n/a" if v is None else format(v, ".4g")


def test_kpi(kpi, gate_error, record_testsuite_property):
    if kpi is None:
        pytest.fail(f"cannot gate: {gate_error}", pytrace=False)
    # Suite-level junit properties (valid in the default xunit2 schema, unlike per-test ones), so CI tools
    # can show the numbers without parsing our JSON.
    for key in ("status", "base", "tuned", "delta", "prompted"):
        if key == "prompted" and kpi.get(key) is None:
            continue  # only when the prompted base (base model + safety system prompt) was evaluated
        record_testsuite_property(f"{kpi['name']}.{key}", _fmt(kpi.get(key)) if key != "status" else kpi[key])
    if kpi.get("interval"):
        record_testsuite_property(f"{kpi['name']}.delta_ci95",
                                  f"[{kpi['interval']['low']:.4g}, {kpi['interval']['high']:.4g}]")
    message = (f"KPI {kpi['name']} ({kpi['status']}): {kpi['metric']} tuned={_fmt(kpi['tuned'])} "
               f"base={_fmt(kpi['base'])} -> {kpi['reason']}")
    if kpi["passed"]:
        return
    if kpi["severity"] == "warn":
        warnings.warn(message)
        return
    pytest.fail(message, pytrace=False)
