"""Shared fixtures. Store fixtures (a real SeaweedFS) live in tests/store_fixtures.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.store_fixtures import *  # noqa: F401,F403  (s3_store and friends)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Nothing in the tests may reach the hub: every model is built in code or read from disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public data mirror {SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer saved as a normal HF folder (built once per session)."""
    from align.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random-llama")


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama and its tokenizer in memory (no folder), for suites that take model objects."""
    from align.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    return build_tiny_model(tok), tok


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with all-MiniLM-L6-v2's real tokenizer, saved as a normal HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from evals.scorers.encoder import minilm_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
