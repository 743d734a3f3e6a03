"""One test per KPI of the run's policy; a failing blocking KPI fails the build."""

import warnings

import pytest


def test_kpi(kpi, gate_error):
    if kpi is None:
        pytest.fail(f"cannot gate: {gate_error}")
    message = (f"KPI {kpi['name']}: {kpi['metric']} tuned={kpi['tuned']:.4g} base="
               f"{'n/a' if kpi['base'] is None else format(kpi['base'], '.4g')} -> {kpi['reason']}")
    if kpi["passed"]:
        return
    if kpi["severity"] == "warn":
        warnings.warn(message)
        return
    pytest.fail(message, pytrace=False)
