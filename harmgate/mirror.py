"""Hub id or local path: where a dataset or a model actually comes from.

Connected users name hub ids and get the hub. Offline (this project's CI, air-gapped clusters) a *mirror*
maps the same ids to local files, so configs stay identical between the two worlds:

- data: ``HARMGATE_DATA_MIRROR`` (or ``data.mirror`` in the config) is a folder laid out like
  ``../shared/data``; ``DATA_INDEX`` below says which file stands for which hub id. A ``mirror.yaml`` in the
  mirror folder (``{hub_id: relative/path}``) adds or overrides entries.
- models: ``HARMGATE_MODEL_DIR`` (default ``models/``) holds folders named like the hub id,
  e.g. ``models/HuggingFaceTB/SmolLM2-135M-Instruct``; ``harmgate models pull`` fills it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

DATA_MIRROR_ENV = "HARMGATE_DATA_MIRROR"
MODEL_DIR_ENV = "HARMGATE_MODEL_DIR"
DEFAULT_MODEL_DIR = "models"

# Hub ids (with an optional "/<data_dir>" and ":<split>") -> a file in a ../shared/data-shaped mirror.
DATA_INDEX: dict[str, str] = {
    "Anthropic/hh-rlhf/harmless-base:test": "hh-rlhf/harmless-base_test_public.jsonl.gz",
    "walledai/AdvBench:train": "advbench/harmful_behaviors.csv",
    "walledai/XSTest:test": "xstest/xstest_prompts.csv",
    "walledai/HarmBench:train": "harmbench/harmbench_behaviors_text_all.csv",
    "tatsu-lab/alpaca:train": "instructions/alpaca/alpaca_5000.json",
    "GAIR/lima:train": "instructions/lima-and-demo/lima.json",
    "vinid/safety-tuned-llamas:train": "safety-tuned-llamas/data/training/safety_only_data_Instructions.json",
}


class DataNotFound(FileNotFoundError):
    pass


class ModelNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ResolvedData:
    """Either a local file (``path``) or a hub dataset to load with ``datasets.load_dataset``."""

    ref: str
    path: Path | None
    hub_id: str | None = None
    data_dir: str | None = None
    split: str = "train"

    @property
    def is_local(self) -> bool:
        return self.path is not None


def data_mirror_root(configured: str | None = None) -> Path | None:
    root = os.environ.get(DATA_MIRROR_ENV) or configured
    return Path(root).expanduser() if root else None


def _mirror_index(root: Path) -> dict[str, str]:
    index = dict(DATA_INDEX)
    extra = root / "mirror.yaml"
    if extra.is_file():
        loaded = yaml.safe_load(extra.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{extra} must map hub ids to relative paths")
        index.update({str(k): str(v) for k, v in loaded.items()})
    return index


def resolve_data(ref: str, *, data_dir: str | None = None, split: str = "train",
                 mirror: str | None = None) -> ResolvedData:
    """Local path, then the mirror, then the hub (returned unresolved for ``datasets`` to fetch)."""
    local = Path(ref).expanduser()
    if local.exists():
        return ResolvedData(ref, local, split=split)
    root = data_mirror_root(mirror)
    if root is not None:
        key = f"{ref}/{data_dir}" if data_dir else ref
        index = _mirror_index(root)
        for candidate in (f"{key}:{split}", key):
            if candidate in index:
                path = root / index[candidate]
                if not path.exists():
                    raise DataNotFound(f"data mirror {root} maps {candidate!r} to {path}, which does not exist")
                return ResolvedData(ref, path, split=split)
        if (root / ref).exists():
            return ResolvedData(ref, root / ref, split=split)
    return ResolvedData(ref, None, hub_id=ref, data_dir=data_dir, split=split)


def model_dir(configured: str | None = None) -> Path:
    return Path(os.environ.get(MODEL_DIR_ENV) or configured or DEFAULT_MODEL_DIR).expanduser()


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model(ref: str, configured_dir: str | None = None) -> str:
    """A local model folder for ``ref`` if there is one, else ``ref`` itself (a hub id for transformers).

    A ref that looks like a path (starts with ., / or ~) must exist: a typo there must not silently turn
    into a hub download attempt.
    """
    local = Path(ref).expanduser()
    if _is_model_folder(local):
        return str(local)
    mirrored = model_dir(configured_dir) / ref
    if _is_model_folder(mirrored):
        return str(mirrored)
    if ref.startswith((".", "/", "~")) or local.exists():
        raise ModelNotFound(f"model {ref!r}: {local} is not a Hugging Face model folder (no config.json)")
    return ref


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_access_hint(ref: str, repo_type: str = "model") -> str:
    """What a connected user does when the hub refuses an id: most often a gated repo (Llama, LIMA) or no login."""
    page = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{ref}"
    return (f"Connected: check the id; if it is gated, accept its terms at {page} and log in (`huggingface-cli "
            f"login` or HF_TOKEN); HF_HUB_OFFLINE=1 uses only what an earlier run cached.")


def model_not_found_message(ref: str, err: Exception) -> str:
    return (f"model {ref!r} could not be loaded: it is not a local folder, not in the model mirror "
            f"{model_dir()}/ and the hub did not provide it ({type(err).__name__}: {err}). "
            f"{hub_access_hint(ref)} Offline, run `harmgate models pull smollm2` (or `tiny`) or point model.base at "
            f"a local folder.")
