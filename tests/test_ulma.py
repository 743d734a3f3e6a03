"""ULMA's loss on a tiny model against a hand computation, and each training method end to end (4-bit, CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from align.ulma import sequence_logprobs, ulma_loss
from harmgate.rundir import create_run_dir
from tests.tiny_runs import tiny_run_config


def _hand_logprob(model, ids: list[int], completion_start: int) -> float:
    """log p(completion | prompt) token by token, with nothing but a forward pass and math.log."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    total = 0.0
    for pos in range(completion_start, len(ids)):
        probs = torch.softmax(logits[pos - 1].double(), dim=-1)
        total += math.log(probs[ids[pos]].item())
    return total


def test_sequence_logprobs_matches_hand_computation(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = [5, 17, 42, 8, 99, 3, 61]
    start = 4  # tokens 4..6 are the completion
    labels = torch.tensor([[-100] * start + ids[start:]])
    with torch.no_grad():
        logp, n = sequence_logprobs(model(torch.tensor([ids])).logits, labels)
    assert n.item() == 3
    assert logp.item() == pytest.approx(_hand_logprob(model, ids, start), abs=1e-4)


def test_ulma_loss_positive_and_negative_by_hand():
    policy = torch.tensor([-12.0, -30.0])
    ref = torch.tensor([-10.0, -25.0])
    n = torch.tensor([4, 10])
    label = torch.tensor([1.0, 0.0])
    beta, z = 0.5, 0.3
    loss = ulma_loss(policy, ref, n, label, beta, z)
    # positive: SFT token-mean NLL, the reference plays no part
    assert loss[0].item() == pytest.approx(12.0 / 4)
    # negative: -log sigmoid(-beta * (logpi - logref) - z) = -log sigmoid(-0.5 * -5 - 0.3) = -log sigmoid(2.2)
    assert loss[1].item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.2))), rel=1e-6)


def test_ulma_negative_gradient_pushes_likelihood_down_and_saturates():
    policy = torch.tensor([-10.0], requires_grad=True)
    ulma_loss(policy, torch.tensor([-10.0]), torch.tensor([5]), torch.tensor([0.0]), 1.0, 0.0).backward()
    assert policy.grad.item() > 0  # gradient descent lowers log pi(y_neg|x)
    far = torch.tensor([-60.0], requires_grad=True)
    ulma_loss(far, torch.tensor([-10.0]), torch.tensor([5]), torch.tensor([0.0]), 1.0, 0.0).backward()
    assert far.grad.item() < 1e-10  # already far below the reference: no further push


@pytest.mark.slow
@pytest.mark.parametrize("method,sources", [
    ("ulma", [{"format": "hh", "field": "chosen"}, {"format": "hh", "field": "rejected", "label": "negative"}]),
    ("dpo", [{"format": "hh", "field": "pair"}]),
])
def test_method_trains_a_4bit_adapter(tmp_path, tiny_model_dir, method, sources):
    from align.mixture import build_mixture, write_mixture
    from align.train import train

    config = tiny_run_config(tmp_path, tiny_model_dir, method, sources=sources)
    run = create_run_dir(config, tmp_path / "run")
    write_mixture(build_mixture(config.data), run)
    metrics = train(run, config)
    assert metrics["method"] == method and metrics["global_steps"] == 2
    assert metrics["quantized_linear_layers"] > 0
    assert all(math.isfinite(p["loss"]) for p in metrics["loss_curve"])
    assert (run.adapter_dir / "adapter_config.json").is_file()
    if method == "ulma":  # both terms were really computed: the label column reached the loss
        assert any("ulma/negative_loss" in p and "ulma/positive_nll" in p for p in metrics["loss_curve"])
        assert metrics["tokens_seen"] > 0
    else:
        assert any("rewards/margins" in p for p in metrics["loss_curve"])
        assert metrics["tokens_seen"] is None  # TRL does not count DPO batches: unknown, not a measured 0


def test_sft_refuses_negative_examples(tmp_path, tiny_model_dir):
    from align.mixture import build_mixture, write_mixture
    from align.train import read_examples

    config = tiny_run_config(tmp_path, tiny_model_dir, "sft",
                             sources=[{"format": "hh", "field": "rejected", "label": "negative"}])
    run = create_run_dir(config, tmp_path / "run")
    write_mixture(build_mixture(config.data), run)
    with pytest.raises(ValueError, match="use training.method: ulma"):
        read_examples(run, "sft")
    with pytest.raises(ValueError, match="needs \\['chosen', 'rejected'\\]"):
        read_examples(run, "dpo")
