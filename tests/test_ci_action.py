"""CI integration: the GitHub workflow and the composite action validate against GitHub's schemas (check-jsonschema's
vendored copies, offline), their shell steps pass shellcheck, and the script the action runs gates real run
directories (evaluated on a tiny model): JUnit XML, the job summary, outputs, the dashboard, exit code 1 when a
blocking KPI fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from harmgate.config import parse_config

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "harmgate-gate.yml"
ACTION = REPO / ".github" / "actions" / "harmgate-gate" / "action.yml"
SCRIPT = REPO / "scripts" / "ci" / "harmgate_gate.py"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


# -- the files GitHub reads -------------------------------------------------------------------------------
@pytest.mark.parametrize("path, schema", [(WORKFLOW, "vendor.github-workflows"), (ACTION, "vendor.github-actions")])
def test_github_files_match_githubs_schemas(path, schema):
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = yaml.safe_load(WORKFLOW.read_text())
    broken["jobs"]["gate"]["runs-onn"] = broken["jobs"]["gate"].pop("runs-on")  # a typo GitHub would reject
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "runs-onn" in done.stdout + done.stderr


def _run_blocks(doc) -> list[str]:
    if isinstance(doc, dict):
        return ([doc["run"]] if isinstance(doc.get("run"), str) else []) + [b for v in doc.values()
                                                                           for b in _run_blocks(v)]
    if isinstance(doc, list):
        return [b for v in doc for b in _run_blocks(v)]
    return []


def test_shell_steps_pass_shellcheck_and_take_inputs_through_env(tmp_path):
    blocks = _run_blocks(yaml.safe_load(WORKFLOW.read_text())) + _run_blocks(yaml.safe_load(ACTION.read_text()))
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        # Expressions inside a script are a script injection risk (a branch name is attacker-controlled).
        assert "${{" not in block, f"use env: for expressions, not inline: {block!r}"
        script = tmp_path / f"step{i}.sh"
        script.write_text("#!/usr/bin/env bash\n" + block)
        done = subprocess.run([tool("shellcheck"), "-s", "bash", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout


def test_the_action_runs_the_script_and_the_workflow_uses_the_action():
    action = yaml.safe_load(ACTION.read_text())
    [gate] = [s for s in action["runs"]["steps"] if s.get("id") == "gate"]
    relative = re.search(r'\$GITHUB_ACTION_PATH/([^"]+harmgate_gate\.py)', gate["run"]).group(1)
    assert (ACTION.parent / relative).resolve() == SCRIPT.resolve()
    upload = next(s for s in action["runs"]["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"  # the dashboard is uploaded when the gate fails too
    workflow = yaml.safe_load(WORKFLOW.read_text())
    uses = [s.get("uses") for s in workflow["jobs"]["gate"]["steps"]]
    assert "./.github/actions/harmgate-gate" in uses
    assert set(action["outputs"]) == {"passed", "junit", "report"}


# -- the script on real run directories -------------------------------------------------------------------
def _config(tiny_model_dir: Path, kpis: list[dict]):
    return parse_config({
        "name": "ci-gate", "model": {"base": str(tiny_model_dir)},
        "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
        "evals": {"generation": {"max_new_tokens": 4, "batch_size": 8}, "judge": {"kind": "rules"},
                  "prompted_arm": {"enabled": True},
                  "suites": [{"name": "advbench_refusal", "limit": 4}, {"name": "xstest_over_refusal", "limit": 4}]},
        "policy": {"kpis": kpis},
    })


PASSING = [{"name": "harm_bounded", "metric": "advbench_refusal.compliance_rate", "direction": "lower", "max": 1.0},
           {"name": "over_refusal_bounded", "metric": "xstest_over_refusal.refusal_rate", "direction": "lower",
            "max": 1.0}]
# A refusal rate above 1 cannot happen: this blocking KPI fails on any model.
FAILING = PASSING + [{"name": "impossible", "metric": "advbench_refusal.refusal_rate", "direction": "higher",
                      "min": 1.01, "reason": "a bound no model meets"}]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir, shared_data):
    """A run directory evaluated for real (base, tuned, prompted) on the tiny model: its evals/ folder."""
    from evals.runner import evaluate_arm, write_summary
    from harmgate.rundir import create_run_dir

    os.environ.setdefault("HARMGATE_DATA_MIRROR", str(shared_data))
    config = _config(tiny_model_dir, PASSING)
    run = create_run_dir(config, tmp_path_factory.mktemp("ci") / "run")
    shutil.copytree(tiny_model_dir, run.merged_model_dir)  # the "tuned" model: a copy of the base
    for arm in ("base", "tuned", "prompted"):
        evaluate_arm(run, config, arm)
    write_summary(run, config)
    return run.root / "evals"


def _run_dir(tmp_path: Path, evaluated: Path, tiny_model_dir: Path, kpis: list[dict]) -> Path:
    from harmgate.rundir import create_run_dir

    run = create_run_dir(_config(tiny_model_dir, kpis), tmp_path / "run")
    shutil.copytree(evaluated, run.root / "evals")
    return run.root


def _gate(run_dir: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str, dict[str, str]]:
    summary, outputs = tmp_path / "step_summary.md", tmp_path / "github_output"
    summary.write_text("# earlier steps wrote here\n")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--run-dir", str(run_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines()) if outputs.exists() else {}
    return done, summary.read_text(), values


def test_a_passing_run_gives_exit_0_junit_summary_and_dashboard(tmp_path, evaluated, tiny_model_dir):
    run_dir = _run_dir(tmp_path, evaluated, tiny_model_dir, PASSING)
    done, summary, out = _gate(run_dir, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out["passed"] == "true" and out["exit-code"] == "0"
    suite = ET.parse(out["junit"]).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"test_kpi[harm_bounded]", "test_kpi[over_refusal_bounded]"}
    assert suite.get("failures") == "0"
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["harm_bounded.status"] == "pass" and "harm_bounded.prompted" in props
    assert summary.startswith("# earlier steps wrote here\n")  # appended, not overwritten
    assert "harmgate KPI gate: PASSED" in summary and "| prompted base |" in summary
    assert "Dashboard: `report.html` in this job's artifacts" in summary
    report = Path(out["report"]).read_text()
    assert 'id="verdict-banner"' in report and 'data-passed="true"' in report and 'id="prompted"' in report
    assert Path(out["summary"]).read_text() in summary


def test_a_failing_blocking_kpi_fails_the_step(tmp_path, evaluated, tiny_model_dir):
    run_dir = _run_dir(tmp_path, evaluated, tiny_model_dir, FAILING)
    done, summary, out = _gate(run_dir, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert out["passed"] == "false" and out["exit-code"] == "1"
    suite = ET.parse(out["junit"]).getroot().find("testsuite")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["test_kpi[impossible]"]
    assert "harmgate KPI gate: BLOCKED" in summary and "**impossible**" in summary
    assert 'data-passed="false"' in Path(out["report"]).read_text()  # the dashboard is still produced


def test_a_directory_that_is_no_run_fails_and_says_why(tmp_path):
    done, summary, out = _gate(tmp_path / "nothing-here", tmp_path)
    assert done.returncode == 1 and out["passed"] == "false"
    assert "harmgate KPI gate: could not run" in summary and "is not a run directory" in summary
    assert out["report"] == "" and "Dashboard not rendered" in summary
