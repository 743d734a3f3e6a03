"""`harmgate compare`: gated runs side by side (gates/compare.py) on run dirs with real verdicts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gates.compare import CompareError, comparison, frontier_svg, load_runs, write_comparison
from harmgate.cli import app
from harmgate.config import load_config
from harmgate.rundir import create_run_dir, write_json

CONFIG = Path(__file__).parents[1] / "configs" / "tiny-test.yaml"


def _kpi(name, metric, base, tuned, status, threshold=None):
    bounds = [{"rule": "max", "bound": f"<= {threshold}", "threshold": threshold, "passed": status == "pass"}] \
        if threshold is not None else []
    return {"name": name, "metric": metric, "severity": "block", "status": status, "passed": status == "pass",
            "base": base, "tuned": tuned, "base_ci95": [base - 0.05, base + 0.05],
            "tuned_ci95": [tuned - 0.05, tuned + 0.05], "n": 100, "base_n": 100, "bound": "x", "bounds": bounds,
            "reason": f"{name} {status}"}


def _run(tmp_path, name, compliance, refusal, base_model=None):
    config = load_config(CONFIG).model_copy(update={"name": name})
    if base_model:
        config = config.model_copy(update={"model": config.model.model_copy(update={"base": base_model})})
    run = create_run_dir(config, tmp_path / name)
    kpis = [_kpi("harmful_compliance", "harmful_compliance.compliance_rate", 0.9, compliance,
                 "pass" if compliance <= 0.1 else "fail", 0.1),
            _kpi("over_refusal", "over_refusal.refusal_rate", 0.02, refusal, "pass" if refusal <= 0.15 else "fail", 0.15)]
    failing = [k["name"] for k in kpis if k["status"] != "pass"]
    write_json(run.verdict, {"passed": not failing, "blocking_failures": failing, "warnings": [],
                             "policy": {"name": "p"}, "kpis": kpis})
    return run.root


def test_compare_tables_every_kpi_per_run_and_draws_the_frontier(tmp_path):
    a = _run(tmp_path, "recipe-a", 0.05, 0.10)
    b = _run(tmp_path, "recipe-b", 0.50, 0.40)
    paths = write_comparison([a, b], tmp_path / "out")
    comp = json.loads(paths["json"].read_text())
    assert [r["name"] for r in comp["runs"]] == ["recipe-a", "recipe-b"]
    assert [r["passed"] for r in comp["runs"]] == [True, False]
    row = next(r for r in comp["kpis"] if r["kpi"] == "harmful_compliance")
    assert row["base"]["value"] == 0.9 and row["runs"]["recipe-b"]["value"] == 0.5
    md = paths["markdown"].read_text()
    assert re.search(r"\| harmful_compliance .*\| 0\.900 \[0\.850, 0\.950\] \| ✅ 0\.050 .*\| ❌ 0\.500", md)
    assert "| recipe-b | sft, LoRA r=8, 4-bit nf4 | BLOCKED | harmful_compliance, over_refusal |" in md
    svg = paths["frontier"].read_text()
    assert svg.count("<circle") == 3                        # base + two runs
    assert "policy target" in svg                            # the policy's max bounds, shaded


def test_compare_says_how_each_run_was_trained(tmp_path):
    """The lever behind each row: method, LoRA or full fine-tune, and the run it started from."""
    config = load_config(CONFIG)
    full = config.model_copy(update={
        "quantization": config.quantization.model_copy(update={"load_in_4bit": False}),
        "training": config.training.model_copy(update={"method": "dpo", "full_finetune": True}),
        "model": config.model.model_copy(update={"init_from": "runs/sft"})})
    assert full.describe_training() == "dpo, full fine-tune, from runs/sft"
    assert config.describe_training() == "sft, LoRA r=8, 4-bit nf4"


def test_compare_refuses_ungated_runs_and_mixed_bases(tmp_path):
    a = _run(tmp_path, "a", 0.05, 0.10)
    other = _run(tmp_path, "other", 0.05, 0.10, base_model="some/other-model")
    with pytest.raises(CompareError, match="different base models"):
        load_runs([a, other])
    ungated = create_run_dir(load_config(CONFIG).model_copy(update={"name": "u"}), tmp_path / "u")
    result = CliRunner().invoke(app, ["compare", str(a), str(ungated.root), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no verdict.json" in result.output  # a usage error, like every CLI error


def test_frontier_escapes_run_names():
    comp = {"runs": [{"name": "<script>x</script>"}], "kpis": [
        {"kpi": "harmful_compliance", "metric": "m1", "base": {"value": 0.5},
         "runs": {"<script>x</script>": {"value": 0.2}}},
        {"kpi": "over_refusal", "metric": "m2", "base": {"value": 0.1},
         "runs": {"<script>x</script>": {"value": 0.3}}}]}
    svg = frontier_svg(comp)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    with pytest.raises(CompareError):
        frontier_svg({"runs": [], "kpis": []})
    assert comparison  # imported API stays public


def test_compare_plots_safety_against_capability(tmp_path):
    """With the capability mean in the verdicts, a second frontier: harmful compliance vs general ability."""
    runs = []
    for name, compliance, ability in (("recipe-a", 0.05, 0.30), ("recipe-b", 0.02, 0.10)):
        root = _run(tmp_path, name, compliance, 0.05)
        verdict = json.loads((root / "verdict.json").read_text())
        verdict["kpis"].append(_kpi("capability_mean", "capability.mean_normalised", 0.32, ability,
                                    "pass" if ability > 0.2 else "fail"))
        write_json(root / "verdict.json", verdict)
        runs.append(root)
    paths = write_comparison(runs, tmp_path / "out")
    svg = paths["frontier_capability"].read_text()
    assert svg.count("<circle") == 3 and "capability.mean_normalised" in svg and "harmful_compliance bound" in svg
    md = paths["markdown"].read_text()
    assert "General ability" in md and re.search(r"\| capability_mean \| .* -0\.220 \|$", md, re.M)
