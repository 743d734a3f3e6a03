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
    # Contrast and harmful-prompt training material (issue #14). Hub copies may differ in schema from these
    # upstream files; the qa/prompt formats name their columns (DataSource.columns), so a config states which.
    "furonghuang-lab/PHTest/claude-3.5-sonnet:train": "contrast/phtest/claude-3.5-sonnet.csv",
    "furonghuang-lab/PHTest/gpt-3.5:train": "contrast/phtest/gpt-3.5.csv",
    "allenai/coconot/pref:train": "contrast/coconot/coconot_pref.jsonl",
    "bench-llm/or-bench/or-bench-hard-1k:train": "contrast/orbench-hard-1k/orbench_hard1k_english_union.jsonl",
    "declare-lab/HarmfulQA:train": "harmful-prompts/red-instruct/harmfulqa.json",
    "declare-lab/CategoricalHarmfulQA:en": "harmful-prompts/red-instruct/catqa_english.json",
    "walledai/MaliciousInstruct:train": "harmful-prompts/strongreject-maliciousinstruct/malicious_instruct.json",
    "walledai/StrongREJECT:train": "harmful-prompts/strongreject-maliciousinstruct/strongreject_minus_advbench_jbb.csv",
    "tdavidson/hate_speech_offensive:train": "davidson-hate-speech/labeled_data.csv",
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


MIRROR_SCHEME = "mirror:"


def _resolve_in_mirror(ref: str, mirror: str | None) -> ResolvedData:
    rel = ref[len(MIRROR_SCHEME):].lstrip("/")
    root = data_mirror_root(mirror)
    if root is None:
        raise DataNotFound(f"{ref!r} names a file in the data mirror, and no mirror is set ({DATA_MIRROR_ENV} or "
                           f"data.mirror); this dataset has no hub copy")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise DataNotFound(f"{ref!r} points outside the data mirror {root}")
    if not path.exists():
        raise DataNotFound(f"{ref!r}: {path} does not exist in the data mirror")
    return ResolvedData(ref, path)


def resolve_data(ref: str, *, data_dir: str | None = None, split: str = "train",
                 mirror: str | None = None) -> ResolvedData:
    """Local path, then the mirror, then the hub (returned unresolved for ``datasets`` to fetch).

    ``mirror:REL/PATH`` names a file inside the data mirror itself, for data that has no hub copy (OKTest,
    LLM-Safeguard's minimal pairs): a connected user needs the mirror for those, and the error says so."""
    if ref.startswith(MIRROR_SCHEME):
        return _resolve_in_mirror(ref, mirror)
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
