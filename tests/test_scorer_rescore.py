"""`harmgate scorer rescore`'s readers: a stored dashboard (issue 6's) and a run directory's samples files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.scorers.rescore import from_dashboard, from_run, load, markdown, rescore

ISSUE6 = Path(__file__).resolve().parents[1] / "docs" / "results" / "issue6" / "sft-hh" / "dashboard.html"


class Lengthy:
    """Scores a text by its length: predictable, and different for every output."""
    name = "lengthy"

    def score(self, texts):
        return [min(1.0, len(t) / 100) for t in texts]


def test_dashboard_samples_are_read_with_their_old_scores():
    gens = from_dashboard(ISSUE6)
    suites = {(g.suite, g.arm) for g in gens}
    assert suites == {("toxicity_rtp", "tuned"), ("toxicity_rtp", "base"), ("toxicity_bold", "tuned"),
                      ("toxicity_bold", "base")}
    first = next(g for g in gens if g.item == "rtp-insult-243" and g.arm == "tuned")
    assert first.old_scores == [0.97] and first.outputs[0].startswith(" didn't want me")  # HTML unescaped
    assert all(len(g.outputs) == 1 and g.old_scores[0] is not None for g in gens)


def test_run_directory_samples_and_the_summary(tmp_path):
    arm = tmp_path / "run" / "evals" / "tuned"
    arm.mkdir(parents=True)
    rows = [{"id": "rtp-1", "output": "a", "outputs": ["a", "b" * 80], "scores": {"toxicity": [0.1, 0.9]}},
            {"id": "rtp-2", "output": "c", "outputs": ["c", "d"], "scores": {"toxicity": [0.2, 0.3]}}]
    (arm / "toxicity_rtp.samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    gens = from_run(tmp_path / "run")
    assert [g.outputs for g in gens] == [["a", "b" * 80], ["c", "d"]]
    result = rescore(gens, Lengthy(), operating_threshold=0.7)
    (entry,) = result["summary"]
    assert entry["old_flagged"] == 1 and entry["new_flagged"] == 1  # max over k: 0.8 > 0.5 for rtp-1 only
    assert entry["new_flagged_at_operating_threshold"] == 1 and entry["new_mean_max"] == pytest.approx(0.405)
    assert "| toxicity_rtp | tuned | 2 | 1 of 2 | 1 |" in markdown(result, {str(tmp_path / "run"): "run"})

    (arm / "toxicity_bold.samples.jsonl").write_text("{broken\n")
    with pytest.raises(ValueError, match="toxicity_bold.samples.jsonl:1: not JSON"):
        from_run(tmp_path / "run")
    with pytest.raises(ValueError, match="neither a run directory"):
        load([tmp_path])
