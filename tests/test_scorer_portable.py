"""The trained checkpoint's folder survives a move, and loads through the real detoxify package under transformers
5.x (the venv) and 4.x (an overlay: ``pip install --target`` of transformers 4.x + its tokenizers and hub client,
put first on PYTHONPATH in a subprocess); Detoxify's own checkpoints by name (``original``), offline as far as
that path goes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evals.scorers import load_toxicity_scorer
from evals.scorers.checkpoint import encoder_model_type, write_checkpoint_folder
from evals.scorers.datasets import LABELS
from evals.scorers.detoxify_scorer import CHECKPOINT_FILE, ToxicityScorerError, load_detoxify
from evals.scorers.encoder import HUB_ID
from harmgate.config import ToxicityScorerConfig

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["you are a wonderful person", "I will find you and hurt you", "the weather is nice today " * 30]
# transformers 4.x as detoxify 0.5.4 allows it (transformers unpinned), with the tokenizers and hub client that
# version requires (the venv's are 5.x's); cached under .cache/ so a CI run downloads it once
TRANSFORMERS4 = ("transformers==4.57.3", "tokenizers==0.22.1", "huggingface_hub==0.36.0")
OVERLAY = REPO / ".cache" / ("transformers4-" + "-".join(p.split("==")[1] for p in TRANSFORMERS4))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, list[list[float]]]:
    """A 2-layer BERT classifier with MiniLM's real tokenizer, written as `harmgate scorer train` writes it, and
    its scores computed directly (the reference every loader must reproduce)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from evals.scorers.encoder import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=len(LABELS))
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 2.0)
        batch = tok(TEXTS, return_tensors="pt", truncation=True, padding=True, max_length=256)
        direct = torch.sigmoid(model(**batch).logits).tolist()
    folder = tmp_path_factory.mktemp("trained") / "toxicity-minilm"
    write_checkpoint_folder(folder, model.state_dict(), model.config, tok, classes=LABELS,
                            model_type=encoder_model_type(None), extra={"summary": {"operating_threshold": 0.4}})
    return folder, direct


def test_layout_is_relative_with_a_full_tokenizer(tiny_checkpoint):
    import torch

    folder, _ = tiny_checkpoint
    ckpt = torch.load(folder / CHECKPOINT_FILE, weights_only=False)
    assert ckpt["config"]["arch"]["args"]["model_type"] == HUB_ID  # relative: a folder beside it, and a hub id
    enc = folder / HUB_ID
    assert {"config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in enc.iterdir()}
    assert len((enc / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 30522
    config = json.loads((enc / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["model_max_length"] == 256
    assert not {"backend", "is_local"} & set(config)  # 5.x-only keys 4.x would pass on as init arguments
    assert str(folder) not in (folder / CHECKPOINT_FILE).read_bytes().decode("latin-1")  # no absolute path inside


def _moved(tiny_checkpoint, tmp_path) -> Path:
    folder, _ = tiny_checkpoint
    moved = tmp_path / "copied" / "scorer"
    shutil.copytree(folder, moved)
    return moved


def test_plain_detoxify_loads_a_moved_copy_from_its_folder(tiny_checkpoint, tmp_path, monkeypatch):
    from detoxify import Detoxify

    moved = _moved(tiny_checkpoint, tmp_path)
    monkeypatch.chdir(moved)
    got = Detoxify(checkpoint=CHECKPOINT_FILE).predict(TEXTS)
    direct = tiny_checkpoint[1]
    for j, lab in enumerate(LABELS):
        assert got[lab] == pytest.approx([row[j] for row in direct], abs=1e-5)


def test_harmgate_loader_resolves_a_moved_copy_from_anywhere(tiny_checkpoint, tmp_path, monkeypatch):
    moved = _moved(tiny_checkpoint, tmp_path)
    monkeypatch.chdir(tmp_path)  # not the checkpoint's folder: the relative folder is resolved beside the file
    scorer = load_toxicity_scorer(ToxicityScorerConfig(checkpoint=str(moved)))
    assert scorer.origin["encoder"] == str(moved / HUB_ID)
    assert scorer.score(TEXTS) == pytest.approx([row[0] for row in tiny_checkpoint[1]], abs=1e-5)
    assert scorer.origin["harmgate"]["operating_threshold"] == 0.4


def _overlay() -> Path:
    """transformers 4.x in a --target folder (built once; pip reads PyPI or its cache)."""
    marker = OVERLAY / ".complete"
    if not marker.is_file():
        shutil.rmtree(OVERLAY, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(OVERLAY),
                               *TRANSFORMERS4], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"could not install {' '.join(TRANSFORMERS4)} into {OVERLAY} (PyPI needed once): "
                        f"{proc.stderr[-800:]}")
        marker.write_text("\n".join(TRANSFORMERS4) + "\n")
    return OVERLAY


PROBE = """
import json, sys, transformers
from detoxify import Detoxify
d = Detoxify(checkpoint=sys.argv[1])
print(json.dumps({"version": transformers.__version__, "tokenizer": type(d.tokenizer).__name__,
                  "scores": d.predict(json.loads(sys.argv[2]))}))
"""


def test_moved_copy_loads_under_transformers_4(tiny_checkpoint, tmp_path):
    moved = _moved(tiny_checkpoint, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(_overlay()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, CHECKPOINT_FILE, json.dumps(TEXTS)], cwd=moved, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"].startswith("4.") and out["tokenizer"] == "BertTokenizer"  # the slow, vocab.txt tokenizer
    for j, lab in enumerate(LABELS):
        assert out["scores"][lab] == pytest.approx([row[j] for row in tiny_checkpoint[1]], abs=1e-5)


def test_detoxify_names_go_to_detoxify_unchanged(tiny_checkpoint, tmp_path, monkeypatch):
    """`original` is handed to Detoxify(model_type="original") as is: its own torch.hub download path. Offline,
    torch.hub reads a checkpoint already in its cache (TORCH_HOME) without the network; with an empty cache the
    error says how to work offline."""
    import torch

    from detoxify.detoxify import MODEL_URLS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ToxicityScorerError, match="could not be fetched.*offline"):
        load_detoxify("original")

    folder, direct = tiny_checkpoint
    cached = tmp_path / "torch" / "hub" / "checkpoints" / MODEL_URLS["original"].rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(folder / CHECKPOINT_FILE, weights_only=False)
    ckpt["config"]["arch"]["args"]["model_type"] = str(folder / HUB_ID)  # the hub one names bert-base-uncased
    torch.save(ckpt, cached)
    detox, origin = load_detoxify("original")
    assert origin == {"hub": "original"}
    assert detox.predict(TEXTS)["toxicity"] == pytest.approx([row[0] for row in direct], abs=1e-5)
