"""Merge the LoRA adapter into the base model and save a plain HF folder (safetensors + tokenizer).

The base is reloaded in full precision rather than merging into the 4-bit training model: merging into NF4
weights rounds the update away, and `dequantize()` goes through bf16 (../shared/NOTES.md).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from align.models import load_causal_lm, load_tokenizer
from align.start import StartingPointError, starting_point
from harmgate.config import RunConfig
from harmgate.rundir import RunDir, read_json, replace_dir, write_json


def merge_adapter(run: RunDir, config: RunConfig) -> Path:
    from peft import PeftModel

    full = (run.adapter_dir / "config.json").is_file() and not (run.adapter_dir / "adapter_config.json").is_file()
    if not full and not (run.adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter at {run.adapter_dir}: run `harmgate train {run.root}` first")
    started = time.time()
    # Full precision for the merge itself; the saved dtype follows the config (float32 on CPU runs).
    dtype = config.model.torch_dtype if config.model.torch_dtype != "auto" else "float32"
    start = starting_point(config)  # the adapter was trained on these weights (model.init_from, or the base)
    trained = read_json(run.train_metrics).get("init_from") if run.train_metrics.is_file() else None
    if (trained or {}).get("weights_sha256") != start.weights_sha256:
        raise StartingPointError(f"merge: the adapter in {run.adapter_dir} was trained from "
                                 f"{(trained or {}).get('ref') or config.model.base}, but model.init_from now gives "
                                 f"{start.identity}: the starting weights changed since training; retrain")
    tokenizer = load_tokenizer(config.model.base, revision=config.model.revision)
    if full:  # training.full_finetune: the trained weights are the model; only dtype and special tokens change
        merged = load_causal_lm(str(run.adapter_dir), dtype=dtype)
    else:
        base = load_causal_lm(start.ref, revision=start.revision, dtype=dtype)
        merged = PeftModel.from_pretrained(base, run.adapter_dir).merge_and_unload()
    for cfg in (merged.config, merged.generation_config):
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id

    dest = run.merged_model_dir
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "harmgate_merge.json", {
        "base_model": config.model.base,
        "init_from": start.as_dict() if start.init_from else None,
        "adapter": str(run.adapter_dir),
        "full_finetune": full,
        "dtype": dtype,
        "seconds": round(time.time() - started, 2),
        "train_metrics": read_json(run.train_metrics) if run.train_metrics.is_file() else None,
    })
    replace_dir(tmp, dest)  # only a complete folder ever carries the final name
    return dest
