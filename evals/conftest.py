"""`pytest evals/`: the KPI gate as a test suite, one test per KPI (test id = KPI name), for CI.

The run directory comes from --run-dir, else $HARMGATE_RUN_DIR, else the newest run under $HARMGATE_RUNS_DIR
(default runs/). The verdict is recomputed from the run's eval summary and its frozen policy, so the gate
does not depend on `harmgate gate` having run (or on a verdict.json someone could edit).

Works with --junitxml (each KPI's numbers are junit properties). The Markdown summary goes to --kpi-summary,
else <run-dir>/kpi_summary.md, and is also appended to $GITHUB_STEP_SUMMARY when that is set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gates.summary import kpi_markdown
from gates.verdict import decide
from harmgate.rundir import RunDir, latest_run_dir, open_run_dir, read_json


@dataclass
class GateState:
    run: RunDir | None = None
    verdict: dict[str, Any] | None = None
    error: str | None = None
    written: list[Path] = field(default_factory=list)


_STATE_KEY = pytest.StashKey[GateState]()


def pytest_addoption(parser):
    group = parser.getgroup("harmgate", "harmgate KPI gate")
    group.addoption("--run-dir", default=None, help="harmgate run directory to gate (default: $HARMGATE_RUN_DIR "
                    "or the newest run under $HARMGATE_RUNS_DIR / runs/)")
    group.addoption("--kpi-summary", default=None, help="where to write the Markdown KPI summary (default: "
                    "<run-dir>/kpi_summary.md; also appended to $GITHUB_STEP_SUMMARY when set)")


def _state(config) -> GateState:
    if _STATE_KEY in config.stash:
        return config.stash[_STATE_KEY]
    state = GateState()
    try:
        given = config.getoption("--run-dir") or os.environ.get("HARMGATE_RUN_DIR")
        state.run = open_run_dir(given) if given else latest_run_dir(os.environ.get("HARMGATE_RUNS_DIR", "runs"))
        state.verdict = decide(state.run.config().policy, read_json(state.run.eval_summary))
    except Exception as err:  # noqa: BLE001 - any reason we cannot gate is itself a failed gate
        state.error = f"{type(err).__name__}: {err}"
    config.stash[_STATE_KEY] = state
    return state


def pytest_generate_tests(metafunc):
    if "kpi" not in metafunc.fixturenames:
        return
    state = _state(metafunc.config)
    if state.verdict is None:
        metafunc.parametrize("kpi", [None], ids=["run-dir"])
    else:
        kpis = state.verdict["kpis"]
        metafunc.parametrize("kpi", kpis, ids=[k["name"] for k in kpis])


@pytest.fixture
def gate_error(request) -> str | None:
    return _state(request.config).error


def pytest_sessionfinish(session, exitstatus):
    state = session.config.stash.get(_STATE_KEY, None)
    if state is None:
        return
    if state.verdict is not None:
        text = kpi_markdown(state.verdict, run_dir=str(state.run.root))
    else:
        text = f"## ❌ harmgate KPI gate: could not run\n\n{state.error}\n"
    given = session.config.getoption("--kpi-summary")
    targets = [Path(given)] if given else ([state.run.root / "kpi_summary.md"] if state.run else [])
    for path in targets:
        path.write_text(text, encoding="utf-8")
        state.written.append(path)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
            f.write(text)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(_STATE_KEY, None)
    if state is None:
        return
    if state.verdict is not None:
        v = state.verdict
        line = (f"harmgate gate {'PASSED' if v['passed'] else 'BLOCKED'} for {state.run.root}"
                + (f" (blocking: {', '.join(v['blocking_failures'])})" if v["blocking_failures"] else "")
                + (f" (warnings: {', '.join(v['warnings'])})" if v["warnings"] else ""))
        terminalreporter.write_line(line, green=v["passed"], red=not v["passed"], bold=True)
    for path in state.written:
        terminalreporter.write_line(f"KPI summary: {path}")
