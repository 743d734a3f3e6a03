"""Toxicity scorer: Detoxify loading offline (tiny checkpoints made here), training data, `harmgate scorer train`."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from evals.scorers import TextScorer, load_toxicity_scorer
from evals.scorers.datasets import (LABELS, heldout_side, locate, read_davidson, read_toxigen, split_and_sample,
                                    TOXIGEN)
from evals.scorers.detoxify_scorer import CHECKPOINT_FILE, ToxicityScorerError, checkpoint_dict
from harmgate.config import ConfigError, ToxicityScorerConfig, parse_config

TEXTS = ["you are a wonderful person", "I will find you and hurt you", "", "the weather is nice today " * 40]


def _tiny_classifier(folder: Path, n: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    cfg = BertConfig.from_pretrained(folder, num_labels=n)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a non-trivial head so that scores differ between texts and classes
        model.classifier.weight.normal_(0, 2.0)
    return model


def _direct_scores(model, folder: Path, texts: list[str]):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        batch = tok(texts, return_tensors="pt", truncation=True, padding=True)
        return torch.sigmoid(model(**batch).logits).numpy()


def test_hub_model_type_is_rewritten_to_the_local_folder(tiny_bert_dir, tmp_path):
    """A checkpoint naming a hub encoder (as Detoxify's own do) loads offline from hf_config_dir, through the
    real Detoxify code, and scores exactly like the same model called directly."""
    import torch

    classes = ["toxic", "severe_toxic", "identity_hate"]  # Detoxify renames toxic -> toxicity etc.
    model = _tiny_classifier(tiny_bert_dir, len(classes))
    path = tmp_path / "toxic_original-like.ckpt"
    torch.save(checkpoint_dict(model.state_dict(), classes=classes, model_type="bert-base-uncased"), path)

    scorer = load_toxicity_scorer(ToxicityScorerConfig(checkpoint=str(path), hf_config_dir=str(tiny_bert_dir),
                                                       batch_size=3))
    assert isinstance(scorer, TextScorer)
    assert scorer.labels == ["toxicity", "severe_toxicity", "identity_attack"]
    direct = _direct_scores(model, tiny_bert_dir, TEXTS)
    got = scorer.predict(TEXTS)
    for j, lab in enumerate(scorer.labels):
        assert got[lab] == pytest.approx(direct[:, j].tolist(), abs=1e-6)
    assert scorer.score(TEXTS) == got["toxicity"]
    assert len(set(round(x, 6) for x in got["toxicity"])) > 1
    assert scorer.score(["one text"]) == pytest.approx([scorer.score(["one text", "two"])[0]], abs=1e-6)
    assert scorer.score([]) == []
    assert torch.load(path, weights_only=False)["config"]["arch"]["args"]["model_type"] == "bert-base-uncased"


def test_own_folder_checkpoint_loads_with_plain_detoxify_and_after_a_move(tiny_bert_dir, tmp_path):
    import torch
    from detoxify import Detoxify

    model = _tiny_classifier(tiny_bert_dir, len(LABELS))
    out = tmp_path / "scorer"
    shutil.copytree(tiny_bert_dir, out / "hf")
    torch.save(checkpoint_dict(model.state_dict(), classes=LABELS, model_type=str(out / "hf")), out / CHECKPOINT_FILE)
    direct = _direct_scores(model, tiny_bert_dir, TEXTS)[:, 0]
    assert Detoxify(checkpoint=str(out / CHECKPOINT_FILE)).predict(TEXTS)["toxicity"] == pytest.approx(direct, abs=1e-6)

    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)  # model_type now names a folder that is gone; the sibling hf/ is used
    scorer = load_toxicity_scorer(ToxicityScorerConfig(checkpoint=str(moved), label="identity_attack"))
    assert scorer.origin["encoder"] == str(moved / "hf")
    assert scorer.score(TEXTS) == pytest.approx(_direct_scores(model, tiny_bert_dir, TEXTS)[:, 1], abs=1e-6)


def test_checkpoint_under_the_model_mirror(tiny_bert_dir, tmp_path, monkeypatch):
    import torch

    model = _tiny_classifier(tiny_bert_dir, len(LABELS))
    out = tmp_path / "harmgate" / "toxicity-minilm"
    shutil.copytree(tiny_bert_dir, out / "hf")
    torch.save(checkpoint_dict(model.state_dict(), classes=LABELS, model_type=str(out / "hf")), out / CHECKPOINT_FILE)
    monkeypatch.setenv("HARMGATE_MODEL_DIR", str(tmp_path))
    scorer = load_toxicity_scorer(ToxicityScorerConfig())  # the default: harmgate/toxicity-minilm in the mirror
    assert scorer.name.startswith("detoxify:harmgate/toxicity-minilm@") and scorer.name.endswith(":toxicity")


def test_missing_checkpoint_says_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMGATE_MODEL_DIR", str(tmp_path))
    with pytest.raises(ToxicityScorerError, match="harmgate scorer train") as err:
        load_toxicity_scorer(ToxicityScorerConfig())
    assert "harmgate/toxicity-minilm" in str(err.value) and "original" in str(err.value)


def test_bad_checkpoints_and_labels_are_named(tiny_bert_dir, tmp_path):
    import torch

    junk = tmp_path / "junk.ckpt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(ToxicityScorerError, match="not a Detoxify checkpoint"):
        load_toxicity_scorer(ToxicityScorerConfig(checkpoint=str(junk)))
    model = _tiny_classifier(tiny_bert_dir, len(LABELS))
    path = tmp_path / "hubtype.ckpt"
    torch.save(checkpoint_dict(model.state_dict(), classes=LABELS, model_type="bert-base-uncased"), path)
    with pytest.raises(ToxicityScorerError, match="hf_config_dir"):  # HF_HUB_OFFLINE=1 in tests/conftest.py
        load_toxicity_scorer(ToxicityScorerConfig(checkpoint=str(path)))
    with pytest.raises(ToxicityScorerError, match="toxicity, identity_attack, insult, threat"):
        load_toxicity_scorer(ToxicityScorerConfig(checkpoint=str(path), hf_config_dir=str(tiny_bert_dir),
                                                  label="obscene"))


def test_config_section():
    base = {"name": "x", "model": {"base": "m"}, "data": {"sources": [{"id": "d", "format": "hh"}]},
            "policy": {"kpis": [{"name": "k", "metric": "a.b", "direction": "lower", "max": 1}]}}
    cfg = parse_config({**base, "evals": {"suites": [{"name": "s"}]}})
    assert cfg.evals.toxicity_scorer.checkpoint == "harmgate/toxicity-minilm"
    assert cfg.evals.judge.kind == "auto"
    with pytest.raises(ConfigError, match="did you mean 'checkpoint'"):
        parse_config({**base, "evals": {"suites": [{"name": "s"}], "toxicity_scorer": {"checkpont": "original"}}})


# --- training data -----------------------------------------------------------------------------------------------

def test_toxigen_statements_are_deduplicated_and_split_by_text(shared_data):
    examples, report = read_toxigen(locate(TOXIGEN, mirror=str(shared_data)))
    assert report.rows_read == 31000 and report.usable == len(examples) > 500
    assert report.origin["duplicates_merged"] > 10 * report.usable  # each statement recurs in many prompt lines
    texts = [e.text for e in examples]
    assert len(set(e.group for e in examples)) == len(examples)
    assert not any("\\n" in t or t.startswith("-") for t in texts)
    assert {e.labels["toxicity"] for e in examples} == {0.0, 1.0}
    assert all(e.labels["insult"] is None for e in examples if e.labels["toxicity"] == 1.0)
    split = split_and_sample(examples, seed=3, heldout_fraction=0.2, train_limit=None, heldout_limit=None)
    assert not {e.group for e in split.train} & {e.group for e in split.heldout}
    again = split_and_sample(examples, seed=3, heldout_fraction=0.2, train_limit=50, heldout_limit=None)
    assert {e.group for e in again.heldout} == {e.group for e in split.heldout}  # limits never move the split
    assert all(heldout_side(e.group, 3, 0.2) for e in split.heldout)


def _slice_mirror(shared_data: Path, root: Path, n_davidson: int = 48, toxigen_lines: int = 3) -> Path:
    """A small mirror: the first rows of the real Davidson CSV (+ bad rows) and a few real ToxiGen lines."""
    src = shared_data / "davidson-hate-speech" / "labeled_data.csv"
    dst = root / "davidson-hate-speech" / "labeled_data.csv"
    dst.parent.mkdir(parents=True)
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    # first rows are mostly 'offensive'; add every 'neither' and 'hate' tweet from further down for both classes
    keep = rows[1:n_davidson // 2 + 1] + [r for r in rows[1:400] if r[5] in ("0", "2")][: n_davidson // 2]
    with open(dst, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerows([rows[0], *keep, ["9999", "3", "0", "0", "3", "7", "class 7 does not exist"],
                     ["9998", "3", "0", "0", "3", "2", ""]])
    for name in ("hate_women_1k.txt", "neutral_women_1k.txt"):
        lines = (shared_data / "toxigen" / "prompts" / name).read_text(encoding="utf-8").splitlines()
        out = root / "toxigen" / "prompts" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines[:toxigen_lines]) + "\n", encoding="utf-8")
    return root


def test_davidson_bad_rows_are_counted(shared_data, tmp_path):
    mirror = _slice_mirror(shared_data, tmp_path)
    examples, report = read_davidson(mirror / "davidson-hate-speech" / "labeled_data.csv")
    assert report.skipped["bad_class"] == 1 and report.skipped["missing_text"] == 1
    assert report.rows_read == report.usable + sum(report.skipped.values()) + report.origin["duplicates_merged"]
    hate = [e for e in examples if e.labels["identity_attack"] == 1.0]
    assert hate and all(e.labels["toxicity"] == 1.0 for e in hate)
    # "offensive" (profanity, in-group slang) teaches insult only: harmgate's toxicity is hateful or threatening
    offensive = [e for e in examples if e.labels["insult"] == 1.0 and e.labels["identity_attack"] == 0.0]
    assert offensive and all(e.labels["toxicity"] is None for e in offensive)


def test_scorer_train_cli_on_a_small_real_slice(shared_data, tiny_bert_dir, tmp_path, monkeypatch):
    """`harmgate scorer train` end to end: real rows, 1 step, a checkpoint Detoxify loads, AUCs in metrics.json,
    the operating threshold and the functional suite; `scorer eval` reproduces the numbers through Detoxify."""
    import json

    from typer.testing import CliRunner

    from harmgate.cli import app

    mirror = _slice_mirror(shared_data, tmp_path / "mirror")
    monkeypatch.setenv("HARMGATE_DATA_MIRROR", str(mirror))
    out = tmp_path / "scorer"
    result = CliRunner().invoke(app, [
        "scorer", "train", "--output", str(out), "--encoder", str(tiny_bert_dir), "--max-steps", "1",
        "--sources", "davidson,toxigen", "--train-count", "davidson=-1", "--heldout-count", "davidson=-1",
        "--batch-size", "8", "--heldout-fraction", "0.4", "--device", "cpu", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "budget: cpu (scale 1, 2 epochs, batch 32); overridden: --batch-size" in result.output
    assert "held-out AUC" in result.output and str(out / CHECKPOINT_FILE) in result.output.replace("\n", "")
    assert "operating threshold" in result.output and "functional suite (350 cases" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["steps"] == 1 and metrics["detoxify_roundtrip"]["max_abs_diff"] < 1e-4
    settings = metrics["settings"]  # the cpu preset, with the one value given on the command line
    assert (settings["budget"], settings["scale"], settings["epochs"], settings["batch_size"]) == \
        ("cpu, overridden", 1.0, 2.0, 8)
    assert set(metrics["heldout_auc"]) == set(LABELS)
    tox = metrics["heldout_auc"]["toxicity"]
    assert tox["n"] > 0 and 0 < tox["positives"] < tox["n"] and 0.0 <= tox["auc"] <= 1.0
    assert 0.0 <= metrics["threshold"]["threshold"] <= 1.0 and metrics["functional"]["n"] == 350
    davidson = next(s for s in metrics["data"]["sources"] if s["source"] == "davidson")
    assert davidson["skipped"] == {"bad_class": 1, "missing_text": 1}
    assert metrics["model_type"] == "encoder" and (out / "encoder" / "vocab.txt").is_file()
    assert not (tmp_path / "scorer.partial").exists()
    scorer = load_toxicity_scorer(ToxicityScorerConfig(checkpoint=str(out)))
    scores = scorer.score(TEXTS)
    assert len(scores) == len(TEXTS) and all(0.0 <= s <= 1.0 for s in scores)

    # `scorer eval` re-scores the same held-out split through Detoxify: the same AUCs (tweets are < 64 tokens),
    # at the checkpoint's own operating threshold.
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["scorer", "eval", "--checkpoint", str(out), "--heldout-fraction", "0.4",
                                      "--sources", "davidson,toxigen", "--heldout-count", "davidson=-1",
                                      "--seed", "1", "--out", str(report)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(report.read_text())
    assert evaluated["threshold"]["threshold"] == metrics["threshold"]["threshold"]
    assert evaluated["functional"]["roc_auc"] == pytest.approx(metrics["functional"]["roc_auc"], abs=1e-3)
    for lab in LABELS:
        assert evaluated["heldout_auc"][lab]["n"] == metrics["heldout_auc"][lab]["n"]
        if metrics["heldout_auc"][lab]["auc"] is not None:
            assert evaluated["heldout_auc"][lab]["auc"] == pytest.approx(metrics["heldout_auc"][lab]["auc"], abs=1e-3)


def test_scorer_train_rejects_bad_settings(tmp_path):
    from typer.testing import CliRunner

    from harmgate.cli import app

    result = CliRunner().invoke(app, ["scorer", "train", "--output", str(tmp_path / "x"),
                                      "--heldout-fraction", "1.5"])
    assert result.exit_code == 2 and "heldout_fraction must be in (0, 1)" in result.output
    result = CliRunner().invoke(app, ["scorer", "train", "--output", str(tmp_path / "x"), "--sources", "davidson,nope"])
    assert result.exit_code == 2 and "unknown toxicity source(s) nope" in result.output
    result = CliRunner().invoke(app, ["scorer", "train", "--output", str(tmp_path / "x"), "--train-count", "davidson"])
    assert result.exit_code == 2 and "expected SOURCE=VALUE" in result.output
    result = CliRunner().invoke(app, ["scorer", "train", "--output", str(tmp_path / "x"), "--budget", "tpu"])
    assert result.exit_code == 2 and "unknown scorer budget 'tpu'; known: auto, cpu, gpu" in result.output


def test_budget_presets_follow_the_device():
    from evals.scorers.train import BUDGETS, TrainSettings, budget_for

    assert budget_for("auto", "cpu") == ("cpu", BUDGETS["cpu"])
    assert budget_for("auto", "cuda:1") == ("gpu", BUDGETS["gpu"])
    assert budget_for("gpu", "cpu") == ("gpu", BUDGETS["gpu"])  # asked for by name: a long CPU run, as asked
    cpu, gpu = BUDGETS["cpu"], BUDGETS["gpu"]
    # the CPU preset is TrainSettings' own default; the GPU one is the budget docs/SCORERS.md measured
    default = TrainSettings(output=Path("x"))
    assert (cpu.scale, cpu.epochs, cpu.batch_size) == (default.scale, default.epochs, default.batch_size)
    assert (cpu.scale, cpu.epochs, cpu.batch_size) == (1.0, 2.0, 32)
    assert (gpu.scale, gpu.epochs, gpu.batch_size) == (6.0, 2.0, 64)
