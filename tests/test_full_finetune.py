"""training.full_finetune: every weight trains (no adapter), for small models where capacity is the limit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harmgate.config import ConfigError
from harmgate.rundir import create_run_dir
from tests.tiny_runs import tiny_run_config


def _config(tmp_path, base, method, **sections):
    sections = {"quantization": {"load_in_4bit": False}, **sections}
    return tiny_run_config(tmp_path, base, method,
                           training={"full_finetune": True, "max_steps": 3, "learning_rate": 1e-3}, **sections)


def test_a_full_fine_tune_of_4bit_weights_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="full_finetune: 4-bit weights cannot be trained.*load_in_4bit: false"):
        _config(tmp_path, tiny_model_dir, "sft", quantization={"load_in_4bit": True})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "ulma", "dpo"])
def test_every_weight_trains_and_merge_keeps_them(tmp_path, tiny_model_dir, method):
    """No adapter: the embedding (which LoRA never touches) moves, merge writes the trained weights as the model,
    and ulma/dpo compare against a frozen starting model (their reference terms are finite and logged)."""
    from safetensors.torch import load_file

    from align.merge import merge_adapter
    from align.mixture import build_mixture, write_mixture
    from align.train import train

    config = _config(tmp_path, tiny_model_dir, method)
    run = create_run_dir(config, tmp_path / "run")
    write_mixture(build_mixture(config.data), run)
    metrics = train(run, config)
    assert metrics["adapter"] is None and metrics["global_steps"] == 3
    assert all(math.isfinite(p["loss"]) for p in metrics["loss_curve"])
    every = sum(t.numel() for f in tiny_model_dir.glob("*.safetensors") for t in load_file(f).values())
    assert metrics["trainable_parameters"] >= every - 1  # all of it (tied embeddings count once)
    assert not (run.adapter_dir / "adapter_config.json").exists()
    if method == "ulma":  # a reference that were the policy itself would give a log-ratio of exactly 0 throughout
        assert any(abs(p.get("ulma/negative_logratio", 0.0)) > 1e-6 for p in metrics["loss_curve"])
    if method == "dpo":
        assert any("rewards/margins" in p for p in metrics["loss_curve"])

    merged = merge_adapter(run, config)
    assert json.loads((merged / "harmgate_merge.json").read_text())["full_finetune"] is True

    def weights(folder):
        out = {}
        for f in folder.glob("*.safetensors"):
            out.update(load_file(f))
        return out

    before, after = weights(tiny_model_dir), weights(merged)
    assert not torch.allclose(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert torch.equal(after["model.embed_tokens.weight"], weights(run.adapter_dir)["model.embed_tokens.weight"])


def test_ulma_without_an_adapter_or_a_reference_is_refused(tmp_path, tiny_model_dir):
    """The negative term needs pi_ref: a full fine-tune that forgot the frozen copy must not train against itself."""
    from align.mixture import build_mixture, write_mixture
    from align.models import load_tokenizer
    from align.train import build_trainer, load_training_model, read_examples

    config = _config(tmp_path, tiny_model_dir, "ulma")
    run = create_run_dir(config, tmp_path / "run")
    write_mixture(build_mixture(config.data), run)
    with pytest.raises(ValueError, match="ULMA without a LoRA adapter needs ref_model"):
        build_trainer(run, config, load_training_model(config, on_gpu=False), load_tokenizer(str(tiny_model_dir)),
                      read_examples(run, "ulma"), on_gpu=False)
