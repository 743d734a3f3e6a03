"""QLoRA SFT: TRL's SFTTrainer + peft LoRA on a bitsandbytes NF4 base.

Examples are conversational prompt/completion pairs (align.mixture), so TRL applies the model's own chat
template and masks the prompt: the loss falls on the final assistant reply only. That works with any chat
template, unlike ``assistant_only_loss`` which needs ``{% generation %}`` markers that SmolLM2 and Llama 3.1
templates lack.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from align.models import load_causal_lm, load_tokenizer, torch_dtype
from align.start import StartingPoint, starting_point
from harmgate.config import QuantizationConfig, RunConfig
from harmgate.rundir import RunDir, read_json, replace_dir, write_json


def bnb_config(q: QuantizationConfig):
    if not q.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
                              bnb_4bit_quant_storage=torch_dtype(q.compute_dtype))


def lora_config(config: RunConfig):
    """The adapter TRL attaches; None for a full fine-tune (TRL then trains the model's own weights)."""
    if config.training.full_finetune:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=config.lora.target_modules, bias="none", task_type="CAUSAL_LM")


_COLUMNS = {"sft": ("prompt", "completion"), "ulma": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected")}


def read_examples(run: RunDir, method: str = "sft") -> list[dict[str, Any]]:
    """The mixture as the chosen method needs it; a mixture that cannot feed that method is an error."""
    import json

    from align.ulma import LABEL_COLUMN

    if not run.train_data.is_file():
        raise FileNotFoundError(f"no training data at {run.train_data}: run `harmgate data {run.root}` first")
    rows = []
    with run.train_data.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            missing = [c for c in _COLUMNS[method] if not row.get(c)]
            if missing:
                raise ValueError(f"{run.train_data}:{n}: method {method!r} needs {missing} (is this source a "
                                 f"{'preference pair (field: pair)' if method == 'dpo' else 'single reply'}?)")
            out = {c: row[c] for c in _COLUMNS[method]}
            label = row.get("label", "positive")
            if method == "sft" and label != "positive":
                raise ValueError(f"{run.train_data}:{n}: a negative example in an SFT run would teach the model "
                                 f"the rejected reply; use training.method: ulma")
            if method == "ulma":
                out[LABEL_COLUMN] = 1.0 if label == "positive" else 0.0
            rows.append(out)
    if not rows:
        raise ValueError(f"{run.train_data} holds no examples")
    return rows


def _common_args(run: RunDir, config: RunConfig, on_gpu: bool) -> dict[str, Any]:
    t, q = config.training, config.quantization
    gc_kwargs: dict[str, Any] = {}
    if t.gradient_checkpointing and t.checkpoint_every_n_layers > 1:
        gc_kwargs["every_n_layers"] = t.checkpoint_every_n_layers
    if t.gradient_checkpointing and t.selective_checkpointing:
        gc_kwargs["selective"] = True  # TRL's SAC: SFTTrainer strips the key and wraps the checkpoint function
    return dict(
        output_dir=str(run.checkpoints_dir),
        max_steps=t.max_steps,
        num_train_epochs=t.num_epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=2,
        seed=t.seed,
        max_length=t.max_seq_length,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs=gc_kwargs or None,
        optim=t.optimizer,
        # Every LoRA weight takes part in every step; DDP's unused-parameter search would only cost time.
        ddp_find_unused_parameters=False,
        torch_compile=t.torch_compile,
        bf16=on_gpu and q.compute_dtype == "bfloat16",
        fp16=on_gpu and q.compute_dtype == "float16",
        use_cpu=not on_gpu,
        report_to=[],
        dataloader_num_workers=0,
    )


def build_trainer(run: RunDir, config: RunConfig, model, tokenizer, examples: list[dict[str, Any]], on_gpu: bool,
                  ref_model=None):
    """The TRL trainer + config pair for ``training.method``; each gets the LoRA config and attaches it (none for a
    full fine-tune, where dpo/ulma take ``ref_model``, a frozen copy of the starting model)."""
    from datasets import Dataset

    method = config.training.method
    if config.training.packing != "none" and method != "sft":
        raise ValueError(f"training.packing: {config.training.packing} works with method: sft only, not {method!r}")
    if config.training.use_liger_kernel:
        _require_liger(on_gpu)
    common = _common_args(run, config, on_gpu)
    dataset = Dataset.from_list(examples)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=config.training.beta)
        return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora_config(config))
    if method == "ulma":
        from align.ulma import ULMAConfig, ULMATrainer

        args = ULMAConfig(**common, completion_only_loss=True, include_num_input_tokens_seen="non_padding",
                          beta=config.training.beta, ulma_z=config.training.ulma_z)
        return ULMATrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                           processing_class=tokenizer, peft_config=lora_config(config))
    from trl import SFTConfig, SFTTrainer

    t = config.training
    packed = t.packing == "padding_free"
    # packing_strategy bfd turns on TRL's padding-free collator (one flat row per batch); the rows layout
    # swaps in align.packing's collator after construction, since TRL refuses a custom one with padding-free.
    args = SFTConfig(**common, completion_only_loss=True, include_num_input_tokens_seen="non_padding",
                     packing=packed, packing_strategy="bfd", use_liger_kernel=t.use_liger_kernel)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(config))
    if packed and t.packing_layout == "rows":
        from align.packing import PackedRowsCollator

        trainer.data_collator = PackedRowsCollator(pad_token_id=tokenizer.pad_token_id)
    return trainer


def _require_liger(on_gpu: bool) -> None:
    if not on_gpu:
        raise ValueError("training.use_liger_kernel needs a CUDA GPU (Liger's kernels are Triton); set it to false "
                         "for CPU runs")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        raise ValueError("training.use_liger_kernel: the liger-kernel package is not installed "
                         "(`pip install liger-kernel`; on the GPU image scripts/gpu/stage_bench.sh stages it)") from None


def load_training_model(config: RunConfig, on_gpu: bool, start: StartingPoint | None = None):
    """The starting model (``model.base``, or ``model.init_from``: align/start.py) as training uses it: 4-bit (if
    configured) on this process's GPU, or float32 on the CPU.

    Under ``accelerate launch`` every rank loads its own copy onto its own device (LOCAL_RANK), as DDP with a
    bitsandbytes model needs."""
    start = start or starting_point(config)
    # A full fine-tune keeps float32 master weights (bf16 AdamW updates lose small steps); compute still runs in
    # the Trainer's bf16/fp16 autocast on a GPU.
    full = config.training.full_finetune
    model = load_causal_lm(
        start.ref, revision=start.revision,
        dtype=config.quantization.compute_dtype if on_gpu and not full else "float32",
        quantization_config=bnb_config(config.quantization),
        device_map={"": int(os.environ.get("LOCAL_RANK", 0))} if on_gpu else None,
    )
    model.config.use_cache = False
    if config.training.attn_implementation:
        model.set_attn_implementation(config.training.attn_implementation)
    return model


def _peak_memory_bytes(on_gpu: bool) -> dict[str, int]:
    import torch

    peak = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if on_gpu:
        peak["gpu_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return peak


def train(run: RunDir, config: RunConfig, *, resume: bool = True) -> dict[str, Any]:
    """Train the adapter (or, with training.full_finetune, the whole model) into ``run.adapter_dir`` and write
    ``run.train_metrics``; returns the metrics."""
    import torch

    on_gpu = torch.cuda.is_available()
    examples = read_examples(run, config.training.method)
    tokenizer = load_tokenizer(config.model.base, revision=config.model.revision)
    start = starting_point(config)
    model = load_training_model(config, on_gpu, start)
    trainer = build_trainer(run, config, model, tokenizer, examples, on_gpu, _reference_model(config, on_gpu, start))
    if trainer.train_dataset is not None and len(trainer.train_dataset) == 0:
        # TRL drops examples whose reply is cut off entirely by max_length (huge prompts); with none left the
        # sampler fails with "num_samples=0", which says nothing about why.
        raise ValueError(f"none of the {len(examples)} training examples fits training.max_seq_length="
                         f"{config.training.max_seq_length}: every prompt is so long that no reply token is left "
                         f"to train on; raise max_seq_length or filter the data")
    # A model from from_pretrained starts in eval mode; without train() gradient checkpointing stays off.
    trainer.model.train()

    checkpoint = _last_checkpoint(run.checkpoints_dir) if resume else None
    started = time.time()
    if checkpoint is not None and _finished(checkpoint, config):
        _restore_finished(trainer, checkpoint)
    else:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.time() - started

    tmp = run.adapter_dir.with_name(f".{run.adapter_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, run.adapter_dir)

    metrics = _train_metrics(trainer, config, examples, wall, on_gpu, checkpoint, start)
    metrics["quantized_linear_layers"] = _count_4bit_layers(trainer.model)
    write_json(run.train_metrics, metrics)
    return metrics


def _finished(checkpoint: Path, config: RunConfig) -> bool:
    """The checkpoint is the last step of training.max_steps (a rerun after a later stage failed)."""
    return 0 < config.training.max_steps <= int(checkpoint.name.rsplit("-", 1)[1])


def _restore_finished(trainer, checkpoint: Path) -> None:
    """Load a finished run's last checkpoint instead of resuming it: transformers, resumed at max_steps in the middle
    of an epoch, trains one step more than asked (seen with transformers 5.2x: a rerun of a 2-step run ended at 3)."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_callback import TrainerState

    trainer._load_from_checkpoint(str(checkpoint))  # weights (adapter or full model), as train() would load them
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))


def _reference_model(config: RunConfig, on_gpu: bool, start: StartingPoint):
    """dpo/ulma without an adapter need the starting model frozen beside the policy (with LoRA, the adapter
    switched off is the reference). Loaded explicitly rather than left to TRL, which would reload the policy's
    ``name_or_path`` by itself."""
    if not config.training.full_finetune or config.training.method == "sft":
        return None
    ref = load_training_model(config, on_gpu, start).eval()
    ref.requires_grad_(False)
    return ref


def _count_4bit_layers(model) -> int:
    """Proof in the metrics that training really ran on a 4-bit base, not silently in full precision."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    return sum(isinstance(m, Linear4bit) for m in model.modules())


def _last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest *complete* checkpoint. The Trainer writes trainer_state.json last (and not atomically), so a
    run killed while saving leaves a folder without it, or with half of it; transformers' get_last_checkpoint
    would pick that folder and the resume would fail. Such folders are deleted (the step is trained again)."""
    import json
    import logging

    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not checkpoints.is_dir():
        return None
    found = [(int(d.name.rsplit("-", 1)[1]), d) for d in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if d.is_dir() and d.name.rsplit("-", 1)[1].isdigit()]
    for _, folder in sorted(found, reverse=True):
        try:
            json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
            return folder
        except (OSError, ValueError) as err:
            logging.getLogger("harmgate.train").warning(
                "deleting incomplete checkpoint %s (killed while it was saved: %s)", folder, type(err).__name__)
            shutil.rmtree(folder)
    return None


# Method-specific signals worth keeping beside the loss (ULMA's two terms, DPO's reward margins).
_METHOD_LOG_KEYS = ("ulma/positive_nll", "ulma/negative_loss", "ulma/negative_logratio",
                    "rewards/accuracies", "rewards/margins")


def _train_metrics(trainer, config: RunConfig, examples, wall: float, on_gpu: bool, resumed_from,
                   start: StartingPoint) -> dict[str, Any]:
    import torch

    history = trainer.state.log_history
    curve = [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate"),
              **{k: h[k] for k in _METHOD_LOG_KEYS if k in h}}
             for h in history if "loss" in h and math.isfinite(h["loss"])]
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    # The Trainer counts tokens from `input_ids`; DPO batches carry prompt/chosen/rejected ids instead, so its
    # count stays 0. Report None (unknown) rather than a 0 that reads as a measurement.
    counted = int(trainer.state.num_input_tokens_seen or 0)
    tokens = None if config.training.method == "dpo" and counted == 0 else counted
    return {
        "base_model": config.model.base,
        "init_from": start.as_dict() if start.init_from else None,
        "method": config.training.method,
        "adapter": None if config.training.full_finetune else "lora",
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "examples": len(examples),
        "global_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "loss_curve": curve,
        "final_loss": curve[-1]["loss"] if curve else None,
        "train_loss": summary.get("train_loss"),
        "tokens_seen": tokens,
        "tokens_per_second": round(tokens / wall, 2) if tokens is not None and wall > 0 else None,
        "wall_seconds": round(wall, 2),
        "peak_memory": _peak_memory_bytes(on_gpu),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "quantization": config.quantization.model_dump(),
        "lora": config.lora.model_dump(),
    }


def load_train_metrics(run: RunDir) -> dict[str, Any]:
    return read_json(run.train_metrics)
