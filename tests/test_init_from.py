"""model.init_from: training starts from a fine-tune (SFT before DPO) while the gate still compares against the base."""

from __future__ import annotations

import json

import pytest
import torch

from align.start import StartingPointError, model_folder, starting_point, weights_sha256
from harmgate.pipeline import PreflightError, preflight
from harmgate.rundir import create_run_dir
from tests.tiny_runs import tiny_run_config

NORM_SHIFT = 0.5  # added to the final norm of the starting model: LoRA never touches it, so merges keep it


def _config(tmp_path, base, init_from=None, method="dpo"):
    return tiny_run_config(tmp_path, base, method, model={"init_from": str(init_from)} if init_from else {})


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    """A finished run directory whose merged model/ is the base with its final norm shifted (a stand-in for an SFT
    run: what matters is that its weights are recognisably not the base's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("sft-run")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight += NORM_SHIFT
    model.save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "model")
    (root / "config.yaml").write_text("name: sft\n")
    return root


def test_without_init_from_training_starts_at_the_base(tmp_path, tiny_model_dir):
    start = starting_point(_config(tmp_path, tiny_model_dir))
    assert start.ref == str(tiny_model_dir) and start.init_from is None and start.identity == str(tiny_model_dir)


def test_a_run_directory_means_its_merged_model_and_the_identity_follows_the_weights(tmp_path, tiny_model_dir,
                                                                                      sft_run):
    start = starting_point(_config(tmp_path, tiny_model_dir, sft_run))
    assert start.ref == str(sft_run / "model") and start.init_from == str(sft_run)
    assert start.weights_sha256 == weights_sha256(sft_run / "model") and start.weights_sha256 in start.identity
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(sft_run / "model", copy)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_sha256(copy) != start.weights_sha256  # a folder rewritten in place is another starting point


def test_bad_starting_points_are_named_before_anything_runs(tmp_path, tiny_model_dir, sft_run):
    unmerged = tmp_path / "unmerged-run"
    unmerged.mkdir()
    (unmerged / "config.yaml").write_text("name: x\n")
    with pytest.raises(StartingPointError, match="without a merged model.*harmgate merge"):
        model_folder(str(unmerged))
    with pytest.raises(StartingPointError, match="not a model folder"):
        model_folder(str(tmp_path / "nowhere"))

    other = tmp_path / "other-vocab"
    import shutil

    shutil.copytree(sft_run / "model", other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["vocab_size"] += 7
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PreflightError, match=r"not a fine-tune of model.base .*vocab_size"):
        preflight(_config(tmp_path, tiny_model_dir, other))
    with pytest.raises(PreflightError, match="not a model folder"):
        preflight(_config(tmp_path, tiny_model_dir, tmp_path / "nowhere"))
    preflight(_config(tmp_path, tiny_model_dir, sft_run))  # a good one passes


def test_on_policy_sampling_keys_its_cache_by_the_starting_weights(tmp_path, tiny_model_dir, sft_run):
    from harmgate.pipeline import _synthesizer

    for init, expected in ((None, str(tiny_model_dir)), (sft_run, weights_sha256(sft_run / "model"))):
        config = _config(tmp_path, tiny_model_dir, init)
        run = create_run_dir(config, tmp_path / f"run-{init is not None}")
        assert expected in _synthesizer(run, config).model_id


@pytest.mark.slow
def test_dpo_from_an_sft_run_trains_and_merges_onto_the_sft_weights(tmp_path, tiny_model_dir, sft_run):
    """DPO (4-bit, CPU) starting from the SFT run: the adapter is merged onto the SFT model (its shifted norm
    survives), train_metrics and the merge record name the starting weights, and the gate's base arm is still the
    original base."""
    from safetensors.torch import load_file

    from align.merge import merge_adapter
    from align.mixture import build_mixture, write_mixture
    from align.train import train
    from evals.arms import resolve_arm

    config = _config(tmp_path, tiny_model_dir, sft_run)
    run = create_run_dir(config, tmp_path / "run")
    write_mixture(build_mixture(config.data), run)
    metrics = train(run, config)
    assert metrics["init_from"]["weights_sha256"] == weights_sha256(sft_run / "model")
    merged = merge_adapter(run, config)
    record = json.loads((merged / "harmgate_merge.json").read_text())
    assert record["init_from"]["ref"] == str(sft_run / "model")

    def norm(folder):
        weights = {}
        for f in folder.glob("*.safetensors"):
            weights.update(load_file(f))
        return weights["model.norm.weight"]

    assert torch.allclose(norm(merged), norm(sft_run / "model"))
    assert torch.allclose(norm(merged), norm(tiny_model_dir) + NORM_SHIFT)
    assert resolve_arm(run, config, "base").model_ref == str(tiny_model_dir)
    assert resolve_arm(run, config, "tuned").model_ref == str(merged)

    # The starting folder changed after training: merging now would put the adapter on other weights.
    with torch.no_grad():
        from transformers import AutoModelForCausalLM

        changed = AutoModelForCausalLM.from_pretrained(sft_run / "model", dtype=torch.float32)
        changed.model.norm.weight += 1.0
        changed.save_pretrained(tmp_path / "changed")
    config2 = config.model_copy(update={"model": config.model.model_copy(update={"init_from": str(tmp_path / "changed")})})
    with pytest.raises(StartingPointError, match="starting weights changed since training"):
        merge_adapter(run, config2)
