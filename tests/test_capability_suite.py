"""The capability suite's configuration checks, sampling and chance correction (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evals.suites import SuiteConfigError, get_suite
from evals.suites.capability import TASKS, chance, normalised
from evals.suites.sources import SourceError
from harmgate.config import SuiteConfig


def test_config_errors_name_the_key():
    suite = get_suite("capability")
    with pytest.raises(SuiteConfigError, match="per_task_limit"):
        suite.check(SuiteConfig(name="capability", limit=10))
    with pytest.raises(SuiteConfigError, match=r"did you mean 'hellaswag'"):
        suite.check(SuiteConfig(name="capability", options={"tasks": ["hellaswog"]}))
    with pytest.raises(SuiteConfigError, match=r"did you mean 'per_task_limit'"):
        suite.check(SuiteConfig(name="capability", options={"per_task_limt": 3}))


def test_sampling_per_task_and_mmlu_spread_over_subjects(shared_data):
    suite = get_suite("capability")
    loaded = suite.load(SuiteConfig(name="capability", seed=3, options={"tasks": ["mmlu", "piqa"],
                                                                        "per_task_limit": 57}), str(shared_data))
    mmlu = [it for it in loaded.items if it.meta["task"] == "mmlu"]
    assert len(mmlu) == 57 and len({it.meta["subject"] for it in mmlu}) == 57  # one per subject
    assert sum(it.meta["task"] == "piqa" for it in loaded.items) == 57
    again = suite.load(SuiteConfig(name="capability", seed=3, options={"tasks": ["mmlu", "piqa"],
                                                                       "per_task_limit": 57}), str(shared_data))
    assert [it.id for it in again.items] == [it.id for it in loaded.items]  # seeded
    src = {s["task"]: s for s in loaded.sources}
    assert src["mmlu"]["items"] == 14042 and src["piqa"]["items"] == 1838 and src["piqa"]["used"] == 57
    full = suite.load(SuiteConfig(name="capability", options={"tasks": ["openbookqa"], "per_task_limit": None}),
                      str(shared_data))
    assert len(full.items) == 500 and full.sources[0]["reconstructed"]


def test_a_bad_row_names_task_file_and_line(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    monkeypatch.setenv("HARMGATE_DATA_MIRROR", str(mirror))
    path = mirror / TASKS["piqa"].source.mirror
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n"
                    + json.dumps({"goal": "g", "sol1": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"task piqa .*piqa_validation_hfformat\.jsonl.* row 2: .*sol2"):
        get_suite("capability").load(SuiteConfig(name="capability", options={"tasks": ["piqa"]}), str(mirror))


def test_chance_correction():
    two = {"arguments": [("q", " a"), ("q", " b")]}
    assert chance("piqa", two) == 0.5 and chance("lambada_openai", {"arguments": [("ctx", " w")]}) == 0.0
    mc2 = {"arguments": [("q", " a")] * 4, "doc": {"mc2_targets": {"labels": [1, 1, 0, 0]}}}
    assert chance("truthfulqa_mc2", mc2) == 0.5  # probability mass on true answers by a uniform guess
    scores = normalised(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.25] * 4))
    assert scores.mean() == pytest.approx((0.5 - 0.25) / 0.75)  # acc 0.5 on 4 choices


def test_sampled_questions_are_held_out_of_training(shared_data):
    suite = get_suite("capability")
    cfg = SuiteConfig(name="capability", options={"tasks": ["arc_easy", "piqa", "winogrande"], "per_task_limit": 5})
    prompts = suite.eval_prompts(cfg, str(shared_data))
    docs = [it.meta["doc"] for it in suite.load(cfg, str(shared_data)).items]
    assert len(prompts) == 15
    assert prompts[:5] == [d["question"] for d in docs[:5]] and prompts[5] == docs[5]["goal"]
    assert prompts[10] == docs[10]["sentence"]
