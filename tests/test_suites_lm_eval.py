"""The bias suites really go through lm-evaluation-harness's task machinery, over local files."""

from __future__ import annotations

import json
import numpy as np
import pytest
import yaml

from evals.lm_eval_tasks import builtin_task_yaml
from evals.runner import run_suite
from evals.suites.loglik import score_continuations
from harmgate.config import SuiteConfig, parse_config


@pytest.fixture
def config(shared_data, monkeypatch):
    monkeypatch.setenv("HARMGATE_DATA_MIRROR", str(shared_data))
    return parse_config({
        "name": "t", "model": {"base": "harmgate/tiny-random-llama"},
        "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
        "evals": {"generation": {"batch_size": 8}, "suites": [{"name": "bias_crows_pairs"}]},
        "policy": {"kpis": [{"name": "k", "metric": "bias_crows_pairs.pct_stereotype", "direction": "lower",
                             "max": 1}]},
    })


def test_crows_pairs_runs_lm_evals_own_task_over_the_mirror_slice(tiny, config, tmp_path):
    model, tok = tiny
    result, _ = run_suite(model, tok, SuiteConfig(name="bias_crows_pairs", limit=10, seed=2), config,
                          work_dir=tmp_path)
    lm = result.info["lm_eval"]
    wrapper = yaml.safe_load(open(lm["yaml"], encoding="utf-8"))
    # lm-eval's own task definition, only the data swapped for a local JSONL (absolute path)
    assert wrapper["include"] == str(builtin_task_yaml("crows_pairs/crows_pairs_english.yaml"))
    assert wrapper["dataset_path"] == "json" and wrapper["dataset_kwargs"]["data_files"]["test"] == lm["data"]
    assert sum(1 for _ in open(lm["data"], encoding="utf-8")) == 10
    # the headline value is lm-eval's aggregate
    assert result.metrics["pct_stereotype"]["value"] == pytest.approx(lm["results"]["pct_stereotype"])
    assert result.metrics["pct_stereotype"]["count"] == round(10 * lm["results"]["pct_stereotype"])
    # lm-eval really scored each sentence: its log-likelihoods equal ours for the same tokens
    # (an empty context is scored after lm-eval's prefix token, the EOS here)
    s = result.samples[0]["scores"]
    ours = score_continuations(model, tok, [tok.eos_token] * 2, [s["sent_more"], s["sent_less"]])
    assert [o.logprob for o in ours] == pytest.approx([s["loglik_more"], s["loglik_less"]], rel=1e-4)  # float32
    assert s["prefers_stereotype"] == (s["loglik_more"] > s["loglik_less"])
    types = result.breakdowns["bias_type"]
    assert sum(g["pct_stereotype"]["n"] for g in types.values()) == 10


def test_bbq_uses_lm_evals_bias_score_aggregations(tiny, config, tmp_path):
    import lm_eval.tasks.bbq.utils as bbq_utils

    model, tok = tiny
    result, _ = run_suite(model, tok, SuiteConfig(name="bias_bbq", limit=8, seed=0), config, work_dir=tmp_path)
    lm = result.info["lm_eval"]
    assert lm["includes"].endswith("bbq/bbq_multiple_choice.yaml")
    m = result.metrics
    for name in ("acc", "accuracy_amb", "accuracy_disamb", "amb_bias_score", "disamb_bias_score"):
        assert m[name]["value"] == pytest.approx(lm["results"][name]), name
    json.dumps([result.metrics, result.breakdowns, result.samples, result.info], allow_nan=False)
    assert m["accuracy_amb"]["n"] + m["accuracy_disamb"]["n"] == 8
    assert set(result.breakdowns["category"]) == {"Age", "Disability_status", "Nationality", "Physical_appearance",
                                                  "Religion", "Sexual_orientation"}  # stratified: all 6 there
    assert sum(1 for _ in open(lm["data"], encoding="utf-8")) == 8
    # the per-sample records agree with the aggregates: recompute both bias scores with lm-eval's functions
    records = []
    for s in result.samples:
        picked, sc = s["output"], s["scores"]
        records.append((float(sc["correct"]), float(picked in (sc["biased_answers"] or [])),
                        float(picked not in bbq_utils.UNKNOWN_RESPONSES),
                        np.array(s["meta"]["context_condition"] == "disambig")))
    amb = [r for r in records if not r[3]]
    dis = [r for r in records if r[3]]
    if amb:
        assert m["amb_bias_score"]["value"] == pytest.approx(bbq_utils.agg_amb_bias_scores(amb))
    if dis:
        assert m["disamb_bias_score"]["value"] == pytest.approx(bbq_utils.agg_disamb_bias_scores(dis))
    assert m["acc"]["value"] == pytest.approx(np.mean([r[0] for r in records]))


def test_winobias_pairs_pro_and_anti_through_the_shipped_task(tiny, config, tmp_path):
    model, tok = tiny
    result, _ = run_suite(model, tok, SuiteConfig(name="bias_winobias", limit=6, seed=0), config, work_dir=tmp_path)
    m = result.metrics
    assert m["pro_anti_gap"]["value"] == pytest.approx(m["accuracy_pro"]["value"] - m["accuracy_anti"]["value"])
    assert m["accuracy"]["value"] == pytest.approx(result.info["lm_eval"]["results"]["acc"])
    assert m["accuracy_pro"]["n"] == 6 and len(result.samples) == 12
    assert [s["meta"]["condition"] for s in result.samples[:2]] == ["pro", "anti"]
    assert set(result.breakdowns["type"]) == {"type1", "type2"}
