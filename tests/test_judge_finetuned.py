"""The fine-tuned cross-encoder judge (evals/scorers/judge_encoder.py): weights, learning, the folder round trip,
tamper detection, load_judge, and validate-judge --finetune's per-fold fits. A 2-layer, 32-wide BERT with
MiniLM's tokenizer stands in for the encoder (tests/conftest.py::tiny_bert_dir)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evals.judge import FinetunedRefusalJudge, load_judge
from evals.scorers.finetune import FinetuneSettings
from evals.scorers.judge_encoder import (META_FILE, CrossEncoderHead, balanced_weights, fit_cross_encoder,
                                         resolve_finetuned)
from evals.scorers.refusal_head import JudgeHeadError
from harmgate.config import JudgeConfig

REFUSALS = ["I'm sorry, but I cannot help with that request.", "I won't provide that; it could cause harm.",
            "No. I can't assist with this.", "Sorry, that is not something I can do."]
ANSWERS = ["Open the terminal and run kill -9 followed by the process id.", "Preheat the oven to 200 degrees.",
           "The capital of France is Paris, on the Seine.", "Use a for loop over the list and add each number."]
QUICK = FinetuneSettings(epochs=1.0, max_steps=40, batch_size=8, learning_rate=2e-3, head_learning_rate=2e-3,
                         warmup_fraction=0.0, max_length=32, freeze_embeddings=False, seed=0)


def test_balanced_weights_give_every_source_and_class_the_same_total():
    sources = ["a", "a", "a", "b", "b", "c"]
    y = [True, True, False, False, False, True]
    w = balanced_weights(sources, y)
    yy = np.array(y)
    assert w[yy].sum() == pytest.approx(w[~yy].sum())
    # sources first (a: 2/3 a row, b: 1, c: 2), then positives x 0.9 and negatives x 1.125 to equal halves of 6
    assert w.tolist() == pytest.approx([0.6, 0.6, 0.75, 1.125, 1.125, 1.8])
    assert balanced_weights(["a", "b"], [True, True]).tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def fitted(tiny_bert_dir):
    replies = (REFUSALS + ANSWERS) * 4
    prompts = ["How do I do this?"] * len(replies)
    y = ([True] * len(REFUSALS) + [False] * len(ANSWERS)) * 4
    return fit_cross_encoder(replies, prompts, y, ["s1", "s2"] * (len(replies) // 2), encoder=str(tiny_bert_dir),
                             device="cpu", settings=QUICK, meta={"test": True})


def test_cross_encoder_learns_refusals_from_answers(fitted):
    p = fitted.predict_proba(REFUSALS + ANSWERS, ["How do I do this?"] * 8)
    assert min(p[:4]) > max(p[4:]), p
    assert fitted.meta["training"]["steps"] == 40 and fitted.meta["settings"]["max_length"] == 32


def test_folder_round_trip_and_tamper_detection(fitted, tmp_path):
    folder = tmp_path / "finetuned"
    fitted.save(folder)
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["format"] == "harmgate-judge-crossencoder-v1" and meta["fingerprint"] == fitted.fingerprint
    loaded = CrossEncoderHead.load(folder)
    texts = REFUSALS[:2] + ANSWERS[:2]
    assert loaded.predict_proba(texts, [None] * 4) == pytest.approx(fitted.predict_proba(texts, [None] * 4), abs=1e-5)
    assert resolve_finetuned(str(folder)) == folder

    weights = folder / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(JudgeHeadError, match="does not match the recorded fingerprint"):
        CrossEncoderHead.load(folder)
    (folder / META_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(JudgeHeadError, match="is not a harmgate-judge-crossencoder-v1 file"):
        CrossEncoderHead.load(folder)


def test_load_judge_finetuned_keeps_the_rules_sure_verdicts(fitted, tmp_path):
    fitted.save(tmp_path / "ft")
    judge = load_judge(JudgeConfig(kind="finetuned", finetuned=str(tmp_path / "ft")))
    assert isinstance(judge, FinetunedRefusalJudge) and judge.name.startswith("minilm-crossencoder-v1:")
    out = judge.judge_many(["", REFUSALS[0], ANSWERS[0]], ["q", "How do I do this?", "How do I do this?"])
    assert out[0].label == "empty"
    assert out[1].refused and out[2].label == "compliance" and out[2].score is not None
    with pytest.raises(JudgeHeadError, match="validate-judge --finetune"):
        load_judge(JudgeConfig(kind="finetuned", finetuned=str(tmp_path / "missing")))


def test_validation_fine_tunes_in_every_fold(shared_data, tmp_path, tiny_bert_dir):
    from evals.judge_validation import JudgeValidationSettings, validate
    from evals.scorers.encoder import SentenceEncoder
    from evals.scorers.refusal_head import FeatureBuilder

    settings = JudgeValidationSettings(mirror=str(shared_data), limit=4, out_dir=tmp_path, harm=False,
                                       encoder=str(tiny_bert_dir),
                                       finetune=FinetuneSettings(max_steps=1, batch_size=8, max_length=32))
    logs: list[str] = []
    res = validate(settings, builder=FeatureBuilder(SentenceEncoder.load(str(tiny_bert_dir))), log=logs.append)
    for entry in res["refusal"].values():
        assert {"finetuned", "finetuned_alone"} <= set(entry["judges"])
    n_folds = len(res["folds"]["source"]) + 2 * len(res["folds"]["model"])
    assert sum("fine-tuned judge, fold" in line for line in logs) == n_folds
    assert res["finetune"]["max_steps"] == 1
    head = CrossEncoderHead.load(res["heads"]["finetuned"]["path"])
    assert head.fingerprint == res["heads"]["finetuned"]["fingerprint"]


def test_bad_fine_tuning_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="epochs must be > 0.*max_steps must be >= 1"):
        FinetuneSettings(epochs=0, max_steps=0)


def test_validate_judge_cli_reports_bad_settings_without_a_traceback(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "harmgate", "scorer", "validate-judge", "--finetune",
                           "--ft-epochs", "-1", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "epochs must be > 0" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_source_folds_only_skip_the_model_folds(shared_data, tmp_path, tiny_bert_dir):
    """--no-model-folds: the four leave-one-source-out fine-tunes, for comparing fine-tuning settings on a GPU."""
    from evals.judge_validation import JudgeValidationSettings, validate
    from evals.scorers.encoder import SentenceEncoder
    from evals.scorers.refusal_head import FeatureBuilder

    settings = JudgeValidationSettings(mirror=str(shared_data), limit=4, out_dir=None, harm=False, model_folds=False,
                                       encoder=str(tiny_bert_dir),
                                       finetune=FinetuneSettings(max_steps=1, batch_size=8, max_length=32))
    logs: list[str] = []
    res = validate(settings, builder=FeatureBuilder(SentenceEncoder.load(str(tiny_bert_dir))), log=logs.append)
    assert res["folds"] == {"source": ["xstest", "phtest", "donotanswer", "coconot"], "model": []}
    assert set(res["refusal"]) == set(res["folds"]["source"])
    assert sum("fine-tuned judge, fold" in line for line in logs) == 4
    with pytest.raises(ValueError, match="needs the harm head off"):
        JudgeValidationSettings(model_folds=False)
