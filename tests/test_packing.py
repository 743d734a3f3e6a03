"""Padding-free packing (align.packing + training.packing): a packed batch must compute exactly what the samples
compute one by one, unpacked. That is the proof of no attention across samples and of per-sample positions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from align.packing import PackedRowsCollator, position_ids_for, real_tokens
from harmgate.config import ConfigError, parse_config
from harmgate.rundir import create_run_dir

# Prompts and replies of different lengths so that best-fit packing puts several samples in a row.
EXAMPLES = [
    {"prompt": [{"role": "user", "content": "question " + "why " * (i % 5) + str(i)}],
     "completion": [{"role": "assistant", "content": "Here is a safe answer " + "step " * (1 + i % 7) + str(i)}]}
    for i in range(12)
]


def _config(tiny_model_dir, packing="padding_free", layout="rows", method="sft", quantized=False, **training):
    return parse_config({
        "name": "t-pack", "model": {"base": str(tiny_model_dir)},
        "quantization": {"load_in_4bit": quantized, "compute_dtype": "float32"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"method": method, "max_steps": 2, "per_device_batch_size": 3, "max_seq_length": 128,
                     "gradient_checkpointing": False, "save_steps": 100, "packing": packing,
                     "packing_layout": layout, **training},
        "data": {"sources": [{"id": "unused", "format": "instruction"}]},
        "evals": {"suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "k", "metric": "advbench_refusal.compliance_rate", "direction": "lower",
                             "max": 1}]},
    })


def _trainer(tmp_path, tiny_model_dir, **kw):
    from align.models import load_tokenizer
    from align.train import build_trainer, load_training_model

    config = _config(tiny_model_dir, **kw)
    run = create_run_dir(config, tmp_path / f"run-{kw.get('packing', 'p')}-{kw.get('layout', 'rows')}")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_training_model(config, on_gpu=False)
    return build_trainer(run, config, model, tokenizer, EXAMPLES, on_gpu=False), tokenizer


def _segments(batch):
    """(row, start, end) of every sample in a packed batch, from its restarting position ids."""
    out = []
    for row, pos in enumerate(batch["position_ids"].tolist()):
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            if b - a > 1:  # a lone 0 is padding
                out.append((row, a, b))
    return out


def _unpacked_reference(tmp_path, tiny_model_dir):
    """token ids -> labels of every example, as the unpacked SFT path prepares them."""
    trainer, _ = _trainer(tmp_path, tiny_model_dir, packing="none")
    return {tuple(ex["input_ids"]): ex["labels"] for ex in trainer.train_dataset}


def test_position_ids_restart_per_sample_and_pad_with_zeros():
    assert position_ids_for([3, 2], 7) == [0, 1, 2, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="more than the row's 4"):
        position_ids_for([3, 2], 4)
    batch = PackedRowsCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9], "seq_lengths": [3, 2]},
        {"input_ids": [4, 4, 4], "labels": [4, 4, 4], "seq_lengths": [3]},
    ])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 0]]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 4, 4, 0, 0]]
    # a sample's first token is never a target (it would be predicted from the previous sample); padding neither
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 4, 4, -100, -100]]
    assert "attention_mask" not in batch  # a mask would switch off transformers' packed-sequence detection
    assert real_tokens(batch) == 8
    with pytest.raises(ValueError, match="do not add up"):
        PackedRowsCollator(pad_token_id=0)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lengths": [2]}])


@pytest.mark.parametrize("layout", ["rows", "flat"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_matches_samples_run_one_by_one(tmp_path, tiny_model_dir, layout, attn):
    trainer, _ = _trainer(tmp_path, tiny_model_dir, layout=layout, attn_implementation=attn)
    reference = _unpacked_reference(tmp_path, tiny_model_dir)
    model = trainer.model.eval()
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows[:3])
    if layout == "rows":
        assert batch["input_ids"].shape[0] == 3
    else:
        assert batch["input_ids"].shape[0] == 1  # TRL's layout: the whole batch as one row
    segments = _segments(batch)
    assert len(segments) > 3, "the batch should hold more samples than rows, or nothing was packed"
    model_inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    with torch.no_grad():
        packed_logits = model(**model_inputs).logits
        # Negative control: the same tokens with an all-ones attention mask (what a padded collator passes)
        # let samples see each other, and the logits change. Without this the test could pass vacuously.
        leaky = model(**model_inputs, attention_mask=torch.ones_like(batch["input_ids"])).logits
    leak_seen = False
    packed_nll = unpacked_nll = 0.0
    for row, a, b in segments:
        ids = batch["input_ids"][row, a:b]
        assert tuple(ids.tolist()) in reference, "packing changed a sample's tokens"
        with torch.no_grad():
            alone = model(input_ids=ids[None]).logits[0]
        torch.testing.assert_close(packed_logits[row, a:b], alone, atol=2e-5, rtol=1e-4)
        leak_seen |= not torch.allclose(leaky[row, a:b], alone, atol=1e-3)
        # completion-only labels survive packing: same targets as the unpacked sample (its first token aside)
        labels = batch["labels"][row, a:b].tolist()
        ref_labels = list(reference[tuple(ids.tolist())])
        assert labels[1:] == ref_labels[1:] and labels[0] == -100
        assert any(x != -100 for x in labels) and any(x == -100 for x in labels[1:])
        packed_nll += _nll(packed_logits[row, a:b], torch.tensor(labels))
        unpacked_nll += _nll(alone, torch.tensor(ref_labels))
    assert leak_seen, "an all-ones mask did not change anything: the check cannot tell leaking from not leaking"
    assert packed_nll == pytest.approx(unpacked_nll, rel=1e-5)


@pytest.mark.slow
def test_flex_attention_packed_rows_match_samples_run_one_by_one(tmp_path, tiny_model_dir):
    # flex attention is the ablation's one faster lever (docs/PERFORMANCE.md); it builds its block mask from the
    # same position ids, checked here the same way. On a CPU it compiles its kernel first (about a minute).
    test_packed_batch_matches_samples_run_one_by_one(tmp_path, tiny_model_dir, "rows", "flex_attention")


def _nll(logits, labels) -> float:
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum").item()


def test_training_loss_of_a_packed_batch_equals_the_unpacked_loss(tmp_path, tiny_model_dir):
    """The trainer's own compute_loss (TRL's fused LM head) on a packed batch = token-mean NLL of its samples."""
    trainer, _ = _trainer(tmp_path, tiny_model_dir)
    rows = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer.data_collator(rows)
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    n = 0
    total = 0.0
    for row, a, b in _segments(batch):
        ids = batch["input_ids"][row, a:b]
        with torch.no_grad():
            alone = trainer.model(input_ids=ids[None]).logits[0]
        labels = batch["labels"][row, a:b]
        total += _nll(alone, labels)
        n += int((labels[1:] != -100).sum())
    assert loss == pytest.approx(total / n, rel=1e-4)


@pytest.mark.parametrize("method", ["ulma", "dpo"])
def test_ulma_and_dpo_refuse_packing_with_a_clear_error(tmp_path, tiny_model_dir, method):
    """ULMA scores each row as one example (one label, one sequence log-prob): a packed row would mix examples."""
    with pytest.raises(ConfigError, match=f"training: .*packing: padding_free needs method: sft \\({method}"):
        _config(tiny_model_dir, method=method)
    assert _config(tiny_model_dir, method=method, packing="none").training.packing == "none"


def test_liger_on_cpu_is_refused_before_loading_anything(tmp_path, tiny_model_dir):
    from align.train import build_trainer

    config = _config(tiny_model_dir, use_liger_kernel=True)
    with pytest.raises(ValueError, match="use_liger_kernel needs a CUDA GPU"):
        build_trainer(create_run_dir(config, tmp_path / "r"), config, None, None, EXAMPLES, on_gpu=False)


@pytest.mark.slow
def test_harmgate_train_with_packing_on_a_4bit_model(tmp_path, tiny_model_dir):
    """`harmgate train`'s own function, packed, on the 4-bit base: it trains, counts only real tokens."""
    from align.train import train

    config = _config(tiny_model_dir, quantized=True, max_steps=3, optimizer="adamw_torch_fused",
                     checkpoint_every_n_layers=2, gradient_checkpointing=True)
    run = create_run_dir(config, tmp_path / "run")
    run.train_data.parent.mkdir(parents=True, exist_ok=True)
    run.train_data.write_text("".join(json.dumps({**ex, "source": "t"}) + "\n" for ex in EXAMPLES))
    metrics = train(run, config)
    assert metrics["global_steps"] == 3 and metrics["quantized_linear_layers"] > 0
    assert all(math.isfinite(p["loss"]) for p in metrics["loss_curve"])
    assert 0 < metrics["tokens_seen"]
    assert (run.adapter_dir / "adapter_config.json").is_file()
