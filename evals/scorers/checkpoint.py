"""A Detoxify-format checkpoint folder that survives being moved and loads under transformers 4.x and 5.x.

Detoxify builds the model with ``config_class.from_pretrained(model_type)`` and the tokenizer with
``BertTokenizer.from_pretrained(model_type)``, where ``model_type`` comes from the checkpoint. An absolute path
there breaks as soon as the folder moves. So the checkpoint names its encoder by a *relative* folder, and that
folder's name is the encoder's hub id when it has one::

    <folder>/detoxify.ckpt                                  model_type = "sentence-transformers/all-MiniLM-L6-v2"
    <folder>/sentence-transformers/all-MiniLM-L6-v2/        config.json (num_labels = classes), vocab.txt,
                                                            tokenizer.json, tokenizer_config.json,
                                                            special_tokens_map.json

transformers resolves that string as a local folder first, relative to the working directory, and otherwise as a
hub id. So plain ``Detoxify(checkpoint="detoxify.ckpt")`` loads a moved copy offline when run from the folder, and
from anywhere where the hub is reachable (the hub's config and tokenizer of all-MiniLM-L6-v2 are the same
architecture and vocabulary); harmgate's loader (``detoxify_scorer.load_detoxify``) resolves the folder against
the checkpoint's own location, so it works from anywhere offline. An encoder without a hub id (a local folder
given to ``--encoder``) is stored as ``encoder/``.

The tokenizer files are written for both major versions: transformers 5 saves only ``tokenizer.json`` for BERT,
but 4.x's ``BertTokenizer`` (the slow class Detoxify names) reads ``vocab.txt``; and 5.x writes init arguments
into ``tokenizer_config.json`` (``backend``, ``is_local``, ...) that mean nothing to 4.x, so that file is written
from the keys both versions read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from evals.scorers.detoxify_scorer import CHECKPOINT_FILE, checkpoint_dict
from evals.scorers.encoder import HUB_ID

LOCAL_ENCODER_FOLDER = "encoder"
MODEL_MAX_LENGTH = 256   # all-MiniLM-L6-v2's sentence-transformers limit; Detoxify's predict truncates here
_TOKENIZER_KEYS = ("do_lower_case", "do_basic_tokenize", "never_split", "tokenize_chinese_chars", "strip_accents",
                   "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def encoder_model_type(encoder: str | None) -> str:
    """The relative folder (and hub id, where there is one) the checkpoint names as its ``model_type``."""
    if encoder is None:
        return HUB_ID
    if Path(encoder).expanduser().is_dir() or encoder.startswith((".", "/", "~")):
        return LOCAL_ENCODER_FOLDER
    return encoder  # a hub id: the folder is named after it


def save_portable_tokenizer(tokenizer: Any, folder: Path, *, model_max_length: int = MODEL_MAX_LENGTH) -> None:
    """The tokenizer as transformers saves it, plus ``vocab.txt`` and a ``tokenizer_config.json`` both 4.x and 5.x
    read the same way."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise ValueError("the tokenizer's vocabulary ids are not contiguous; cannot write vocab.txt")
    (folder / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in ordered), encoding="utf-8")
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    config = {"tokenizer_class": "BertTokenizer", "model_max_length": model_max_length}
    for key in _TOKENIZER_KEYS:
        value = init.get(key, getattr(tokenizer, key, None))
        if key.endswith("_token") and value is not None:
            value = str(value)
        config[key] = value
    config["do_lower_case"] = bool(config["do_lower_case"]) if config["do_lower_case"] is not None else True
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {k: config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token") if config[k]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def write_checkpoint_folder(folder: Path, state_dict: dict[str, Any], model_config: Any, tokenizer: Any, *,
                            classes: Sequence[str], model_type: str, extra: dict[str, Any] | None = None) -> Path:
    """``detoxify.ckpt`` + the encoder folder it names (see the module doc); returns the checkpoint path."""
    import shutil

    import torch

    if Path(model_type).is_absolute() or ".." in Path(model_type).parts:
        raise ValueError(f"model_type {model_type!r} must be a relative folder inside the checkpoint folder")
    shutil.rmtree(folder, ignore_errors=True)
    enc = folder / model_type
    enc.mkdir(parents=True)
    model_config.save_pretrained(enc)
    save_portable_tokenizer(tokenizer, enc)
    path = folder / CHECKPOINT_FILE
    torch.save(checkpoint_dict(state_dict, classes=classes, model_type=model_type, extra=extra), path)
    return path
