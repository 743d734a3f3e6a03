"""Where training starts: ``model.base``, or the weights ``model.init_from`` names (an SFT run before DPO).

The gate always compares against ``model.base``; only training, merging and on-policy sampling start from here.
A starting folder is checked against the base before anything loads (same architecture and vocabulary, so the
base's tokenizer and chat template still apply) and identified by the sha256 of its weight files, which goes into
train_metrics.json, the merge record and the synthesis cache key (a folder rewritten in place is another model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harmgate import digests
from harmgate.config import RunConfig

COMPATIBLE_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")


class StartingPointError(ValueError):
    """model.init_from cannot be used: says what is wrong with which folder."""


@dataclass(frozen=True)
class StartingPoint:
    ref: str                          # what load_causal_lm loads: model.base or the starting folder
    revision: str | None              # model.revision for the base; a local folder has none
    init_from: str | None = None      # as configured
    weights_sha256: str | None = None # of the starting folder's weight files, in name order

    @property
    def identity(self) -> str:
        """A name that changes when the weights do (synthesis cache key, records)."""
        return self.ref if self.init_from is None else f"{self.ref}@sha256:{self.weights_sha256}"

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "init_from": self.init_from, "weights_sha256": self.weights_sha256}


def model_folder(ref: str) -> Path:
    """The model folder ``ref`` names: itself, or ``ref/model`` for a harmgate run directory."""
    path = Path(ref).expanduser()
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "run.json").is_file() or (path / "config.yaml").is_file():
        raise StartingPointError(f"model.init_from: {ref} is a run directory without a merged model (no "
                                 f"{path / 'model' / 'config.json'}): run `harmgate merge {ref}` first")
    raise StartingPointError(f"model.init_from: {ref} is not a model folder (no config.json) nor a run directory "
                             f"with model/; give a merged model folder or a finished run")


def weights_sha256(folder: Path) -> str:
    try:
        return digests.weights_sha256(folder)
    except FileNotFoundError as err:
        raise StartingPointError(f"model.init_from: {err}") from None


def _base_config(config: RunConfig) -> dict[str, Any]:
    from transformers import AutoConfig

    from harmgate.mirror import resolve_model

    return AutoConfig.from_pretrained(resolve_model(config.model.base), revision=config.model.revision).to_dict()


def check_compatible(start: dict[str, Any], base: dict[str, Any], folder: Path, base_ref: str) -> None:
    """The starting weights must be the base's architecture and vocabulary (the base's tokenizer is used)."""
    differ = [f"{k}: {start.get(k)!r} there, {base.get(k)!r} in the base"
              for k in COMPATIBLE_FIELDS if start.get(k) != base.get(k)]
    if differ:
        raise StartingPointError(f"model.init_from: {folder} is not a fine-tune of model.base {base_ref!r} ("
                                 + "; ".join(differ) + ")")


def starting_folder(config: RunConfig) -> Path:
    """model.init_from's model folder, checked against the base (cheap: configs only; preflight calls this)."""
    if config.model.init_from is None:
        raise StartingPointError("model.init_from is not set: training starts at model.base")
    folder = model_folder(config.model.init_from)
    try:
        start = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise StartingPointError(f"model.init_from: {folder / 'config.json'} is unreadable: {err}") from None
    check_compatible(start, _base_config(config), folder, config.model.base)
    return folder


def starting_point(config: RunConfig) -> StartingPoint:
    """Where training starts, with the starting weights' digest (hashes every weight file: once per stage)."""
    if config.model.init_from is None:
        return StartingPoint(config.model.base, config.model.revision)
    folder = starting_folder(config)
    return StartingPoint(str(folder), None, config.model.init_from, weights_sha256(folder))
