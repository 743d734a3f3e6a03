"""The production policy's capability rows block a model whose general ability dropped, and pass one that did not.

A random tiny model answers at chance, so it cannot lose ability. The "base" here is a tiny model trained until it
prefers the gold answer of a small lm-eval slice (a stand-in for a capable model: it has memorised the slice, which
is fine for testing the gate and nothing else); the "tuned" model is that base deliberately damaged (its weights
drowned in noise). Both go through the real capability suite (lm-eval's tasks) and the real verdict code with the
capability KPIs of configs/policies/production.yaml.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from evals.runner import run_suite
from gates.verdict import decide
from harmgate.config import KPI, PolicyConfig, SuiteConfig, parse_config

REPO = Path(__file__).resolve().parent.parent
TASKS = ["arc_easy", "piqa", "winogrande"]
PER_TASK = 8


def _config(mirror: Path):
    return parse_config({
        "name": "t", "model": {"base": "harmgate/tiny-random-llama"},
        "data": {"mirror": str(mirror), "sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
        "evals": {"generation": {"batch_size": 16}, "suites": [{"name": "capability"}]},
        "policy": {"kpis": [{"name": "k", "metric": "capability.mean_normalised", "direction": "higher", "min": 0}]},
    })


def _suite(model, tok, tmp: Path, mirror: Path):
    cfg = SuiteConfig(name="capability", options={"tasks": TASKS, "per_task_limit": PER_TASK, "bootstrap_iters": 0})
    result, _ = run_suite(model, tok, cfg, _config(mirror), work_dir=tmp)
    return result


def _gold_texts(result) -> list[str]:
    """context + gold continuation of every item, exactly as lm-eval scored them."""
    texts = []
    for s in result.samples:
        sc = s["scores"]
        contexts = sc.get("contexts") or [s["prompt"]] * len(sc["choices"])
        texts.append(contexts[sc["gold"]] + sc["choices"][sc["gold"]])
    return texts


def _memorise(model, tok, texts: list[str], steps: int = 80) -> None:
    import torch

    torch.manual_seed(0)
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _damage(model, scale: float = 3.0):
    import torch

    damaged = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * (p.std() if p.numel() > 1 else 1.0))
    return damaged


def _capability_policy(present: set[str]) -> PolicyConfig:
    """production.yaml's capability KPIs whose metric this slice reports (TruthfulQA etc. are not run here)."""
    raw = yaml.safe_load((REPO / "configs/policies/production.yaml").read_text(encoding="utf-8"))
    kpis = [KPI.model_validate(k) for k in raw["kpis"] if k["metric"].startswith("capability.")
            and k["metric"].split(".", 1)[1] in present]
    return PolicyConfig(name="production (capability rows)", kpis=kpis)


@pytest.fixture(scope="module")
def capable(shared_data, tmp_path_factory):
    from align.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    tmp = tmp_path_factory.mktemp("cap")
    _memorise(model, tok, _gold_texts(_suite(model, tok, tmp / "probe", shared_data)))
    return model, tok, _suite(model, tok, tmp / "base", shared_data), tmp, shared_data


@pytest.fixture(scope="module")
def damaged(capable):
    model, tok, _, tmp, mirror = capable
    return _suite(_damage(model), tok, tmp / "damaged", mirror)


def test_production_policy_blocks_a_damaged_model(capable, damaged):
    model, tok, base, tmp, mirror = capable
    assert base.metrics["mean_normalised"]["value"] > 0.6  # the stand-in base is well above chance
    assert damaged.metrics["mean_normalised"]["value"] < 0.35
    policy = _capability_policy(set(base.metrics))
    assert {k.name for k in policy.kpis} >= {"capability_mean", "cap_arc_easy", "cap_piqa", "cap_winogrande"}
    verdict = decide(policy, {"schema_version": 1, "arms": {"base": {"capability": base.metrics},
                                                             "tuned": {"capability": damaged.metrics}}})
    assert not verdict["passed"]
    assert "capability_mean" in verdict["blocking_failures"]
    row = next(k for k in verdict["kpis"] if k["name"] == "capability_mean")
    assert row["status"] == "fail" and "significantly worse than base by more than 0.02" in row["reason"]
    assert row["interval"]["high"] < -0.02  # the whole interval on tuned - base lies below the margin
    assert set(verdict["warnings"]) & {"cap_arc_easy", "cap_piqa", "cap_winogrande"}


def test_production_policy_passes_an_undamaged_model(capable):
    model, tok, base, tmp, mirror = capable
    again = _suite(model, tok, tmp / "again", mirror)
    assert again.metrics["mean_normalised"]["value"] == pytest.approx(base.metrics["mean_normalised"]["value"])
    verdict = decide(_capability_policy(set(base.metrics)),
                     {"schema_version": 1, "arms": {"base": {"capability": base.metrics},
                                                    "tuned": {"capability": again.metrics}}})
    assert verdict["passed"] and not verdict["warnings"], verdict["blocking_failures"]


def test_dashboard_and_compare_show_the_capability_rows(capable, damaged, tmp_path):
    from gates.compare import write_comparison
    from gates.report import build_report, render_report
    from harmgate.config import load_config
    from harmgate.rundir import create_run_dir, write_json

    _, _, base, _, _ = capable
    policy = _capability_policy(set(base.metrics))
    config = load_config(REPO / "configs/tiny-test.yaml").model_copy(update={"name": "damaged", "policy": policy})
    run = create_run_dir(config, tmp_path / "damaged")
    summary = {"schema_version": 1, "arms": {"base": {"capability": base.metrics},
                                             "tuned": {"capability": damaged.metrics}}}
    write_json(run.eval_summary, summary)
    write_json(run.verdict, decide(policy, summary))
    report = build_report(run, registry=False)
    rows = {r["task"]: r for r in report.capability["rows"]}
    assert set(rows) == {"capability mean (chance-corrected)", *TASKS}
    mean = rows["capability mean (chance-corrected)"]
    assert mean["delta"] < 0 and mean["interval"]["high"] < 0
    assert rows["piqa"]["metric"] == "piqa/acc_norm" and rows["winogrande"]["metric"] == "winogrande/acc"
    html = render_report(report)
    assert 'id="capability-table"' in html and 'data-task="arc_easy"' in html
    md = write_comparison([run.root], tmp_path / "cmp")["markdown"].read_text(encoding="utf-8")
    assert "General ability" in md and "| capability_mean | `capability.mean_normalised` |" in md
