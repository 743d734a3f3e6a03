"""`pytest evals/`: the KPI gate as a test suite, one test per KPI, for CI.

The run directory comes from --run-dir, else $HARMGATE_RUN_DIR, else the newest run under runs/.
The verdict is recomputed from the run's eval summary and its frozen policy, so the gate does not depend
on `harmgate gate` having run (or on a verdict.json someone could edit).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gates.summary import kpi_markdown
from gates.verdict import decide
from harmgate.rundir import latest_run_dir, open_run_dir, read_json

_STATE: dict = {}


def pytest_addoption(parser):
    parser.addoption("--run-dir", default=None, help="harmgate run directory to gate (default: $HARMGATE_RUN_DIR "
                     "or the newest run under runs/)")
    parser.addoption("--kpi-summary", default=None, help="where to write the Markdown KPI summary (default: "
                     "$GITHUB_STEP_SUMMARY if set, else <run-dir>/kpi_summary.md)")


def _load(config) -> dict:
    if "verdict" in _STATE or "error" in _STATE:
        return _STATE
    try:
        given = config.getoption("--run-dir") or os.environ.get("HARMGATE_RUN_DIR")
        run = open_run_dir(given) if given else latest_run_dir(os.environ.get("HARMGATE_RUNS_DIR", "runs"))
        _STATE["run"] = run
        _STATE["verdict"] = decide(run.config().policy, read_json(run.eval_summary))
    except Exception as err:  # any reason we cannot gate is itself a failed gate
        _STATE["error"] = f"{type(err).__name__}: {err}"
    return _STATE


def pytest_generate_tests(metafunc):
    if "kpi" not in metafunc.fixturenames:
        return
    state = _load(metafunc.config)
    if "error" in state:
        metafunc.parametrize("kpi", [None], ids=["run-dir"])
    else:
        kpis = state["verdict"]["kpis"]
        metafunc.parametrize("kpi", kpis, ids=[k["name"] for k in kpis])


@pytest.fixture
def gate_error() -> str | None:
    return _STATE.get("error")


def pytest_sessionfinish(session, exitstatus):
    if "verdict" not in _STATE:
        return
    target = session.config.getoption("--kpi-summary") or os.environ.get("GITHUB_STEP_SUMMARY")
    path = Path(target) if target else _STATE["run"].root / "kpi_summary.md"
    text = kpi_markdown(_STATE["verdict"], run_dir=str(_STATE["run"].root))
    mode = "a" if target and target == os.environ.get("GITHUB_STEP_SUMMARY") else "w"
    with open(path, mode, encoding="utf-8") as f:
        f.write(text)
