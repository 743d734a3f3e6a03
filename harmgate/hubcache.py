"""Lay out, offline, the caches a connected machine has after its first run: Hugging Face hub, datasets, torch hub.

A connected user's `harmgate run configs/llama31-8b.yaml` resolves everything by hub id. Nothing in CI can reach
the hub, so this module writes what those downloads would have left behind, in each library's own layout, and the
connected-path tests then run with ``HF_HUB_OFFLINE=1`` against it, through the libraries' real lookup code:

- models (transformers -> huggingface_hub): ``$HF_HOME/hub/models--ORG--NAME/{blobs/<sha256>,
  snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/main}``, written with huggingface_hub's own
  naming (``repo_folder_name``) and checked with its own reader (``scan_cache_dir``);
- datasets, two layers: the repo files as the hub serves them (parquet, jsonl, jsonl.gz, scripts) in the same hub
  layout, and the prepared Arrow cache ``$HF_HOME/datasets/<org>___<name>/<config>/<version>/<commit>/`` that
  ``datasets`` builds from them. ``datasets`` 5.x never reads ``hub/datasets--*`` offline: with HF_HUB_OFFLINE=1
  ``load_dataset("ORG/NAME")`` raises OfflineModeIsEnabled before any hub call and falls back to the Arrow cache
  (``CachedDatasetModuleFactory``). That cache is built here by ``datasets``' own packaged builder (Parquet/Json)
  with the repo id, config name and commit hash its hub path passes, reading the hub-layout files;
- Detoxify: torch hub's ``$TORCH_HOME/hub/checkpoints/<file name of the release URL>`` (``torch.hub.
  load_state_dict_from_url`` looks there by file name before downloading) and its encoder (bert-base-uncased)
  config + tokenizer in the HF hub layout.

``hub_refs(config)`` lists what a run config fetches by name. ``harmgate/standins.py`` fills a cache with tiny
stand-ins for configs/llama31-8b.yaml; ``scripts/hub_cache.py`` is its command line (docs/CONNECTED.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

RepoType = str  # "model" | "dataset"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class HubCache:
    """One cache root: ``hf/`` is HF_HOME, ``torch/`` is TORCH_HOME (see :meth:`env`)."""

    root: Path
    written: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def hf_home(self) -> Path:
        return self.root / "hf"

    @property
    def hub_dir(self) -> Path:
        return self.hf_home / "hub"           # huggingface_hub.constants.HF_HUB_CACHE under HF_HOME

    @property
    def datasets_dir(self) -> Path:
        return self.hf_home / "datasets"      # datasets.config.HF_DATASETS_CACHE under HF_HOME

    @property
    def torch_home(self) -> Path:
        return self.root / "torch"

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this cache, and nothing else (offline, no mirror)."""
        return {"HF_HOME": str(self.hf_home), "HF_HUB_CACHE": str(self.hub_dir),
                "HF_DATASETS_CACHE": str(self.datasets_dir), "TORCH_HOME": str(self.torch_home),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    # --- the hub layout ------------------------------------------------------------------------------------
    def repo_dir(self, repo_id: str, repo_type: RepoType) -> Path:
        from huggingface_hub.file_download import repo_folder_name

        return self.hub_dir / repo_folder_name(repo_id=repo_id, repo_type=repo_type)

    def add_repo(self, repo_id: str, repo_type: RepoType, files: dict[str, bytes | Path]) -> Path:
        """Write ``files`` ({path in repo: content or local file}) as one commit on ``main``; returns the
        snapshot folder. Blobs are named by sha256 as huggingface_hub names LFS blobs (its etag); snapshots hold
        relative symlinks to them, and ``refs/main`` the commit hash."""
        contents = {rel: (src.read_bytes() if isinstance(src, Path) else src) for rel, src in sorted(files.items())}
        commit = hashlib.sha1(json.dumps({rel: _sha256(b) for rel, b in contents.items()}).encode()).hexdigest()
        repo = self.repo_dir(repo_id, repo_type)
        snapshot = repo / "snapshots" / commit
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for rel, data in contents.items():
            blob = repo / "blobs" / _sha256(data)
            if not blob.exists():
                blob.write_bytes(data)
            link = snapshot / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        self.written.append({"kind": repo_type, "id": repo_id, "commit": commit,
                             "files": {rel: len(b) for rel, b in contents.items()}})
        return snapshot

    def add_model_folder(self, repo_id: str, folder: Path) -> Path:
        files = {str(p.relative_to(folder)): p for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, "model", files)

    # --- datasets --------------------------------------------------------------------------------------------
    def add_dataset(self, repo_id: str, files: dict[str, bytes | Path], *,
                    builds: Iterable["ArrowBuild"] = ()) -> Path:
        """The repo files as the hub serves them, plus each :class:`ArrowBuild` prepared into datasets' cache."""
        snapshot = self.add_repo(repo_id, "dataset", files)
        for build in builds:
            self._prepare(repo_id, snapshot, build)
        return snapshot

    def _prepare(self, repo_id: str, snapshot: Path, build: "ArrowBuild") -> None:
        """Run datasets' packaged builder over the snapshot files with the arguments its hub path passes
        (``load.HubDatasetModuleFactory`` + ``load_dataset_builder``): repo_id, snake-cased dataset_name, the
        commit hash, config name, data_dir; so the Arrow cache lands where ``load_dataset`` looks offline."""
        from datasets import BuilderConfig
        from datasets.data_files import DataFilesDict, DataFilesList
        from datasets.load import import_main_class
        from datasets.naming import camelcase_to_snakecase
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
        from huggingface_hub import hf_hub_download

        module_path, _hash = _PACKAGED_DATASETS_MODULES[build.builder]
        builder_cls = import_main_class(module_path)
        commit = snapshot.name
        # The download step of the hub path is hf_hub_download(revision=<commit>); done here (offline it is a
        # lookup in the hub layout just written), so the builder reads exactly the files the hub serves.
        local = {split: [hf_hub_download(repo_id, p, repo_type="dataset", revision=commit, cache_dir=self.hub_dir)
                         for p in paths] for split, paths in build.splits.items()}
        data_files = DataFilesDict({split: DataFilesList(paths, [(str(snapshot), commit)] * len(paths))
                                    for split, paths in local.items()})
        # Where load_dataset looks offline (packaged_modules/cache: _find_hash_in_cache): <ns>___<snake name>/
        # <config id>/<version>/<commit>, config id = the config name plus data_dir when one is given.
        config_id = BuilderConfig(build.config_name).create_config_id(
            {"data_dir": build.data_dir} if build.data_dir else {})
        builder = builder_cls(cache_dir=str(self.datasets_dir), dataset_name=camelcase_to_snakecase(Path(repo_id).name),
                              config_name=build.config_name, config_id=config_id, data_files=data_files,
                              hash=commit, **build.kwargs)
        # The namespace folder comes from repo_id, which the builder only accepts with hf:// data files (whose
        # resolution needs the API); set it after the data-file check and rebuild the cache path it implies.
        builder.repo_id = repo_id
        builder._cache_dir = builder._build_cache_dir()
        builder.download_and_prepare()

    # --- torch hub -------------------------------------------------------------------------------------------
    def add_torch_checkpoint(self, url: str, obj: Any) -> Path:
        """``obj`` saved where ``torch.hub.load_state_dict_from_url(url)`` finds it without downloading."""
        import torch
        from urllib.parse import urlparse

        dest = self.torch_home / "hub" / "checkpoints" / os.path.basename(urlparse(url).path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, dest)
        self.written.append({"kind": "torch_hub", "id": url, "file": str(dest), "bytes": dest.stat().st_size})
        return dest

    def scan(self):
        """huggingface_hub's own reading of the cache (raises on a malformed layout)."""
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(self.hub_dir)
        if info.warnings:
            raise RuntimeError(f"huggingface_hub found a malformed cache at {self.hub_dir}: {info.warnings}")
        return info


@dataclass(frozen=True)
class ArrowBuild:
    """One configuration of a hub dataset as ``load_dataset(repo_id, config_name, data_dir=...)`` prepares it."""

    builder: str                          # "parquet" | "json" | "csv"
    splits: dict[str, list[str]]          # split -> repo paths
    config_name: str = "default"
    data_dir: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


# Detoxify's named checkpoints and the hub model each one's ``model_type`` names (their checkpoints' config).
DETOXIFY_ENCODERS = {"original": "bert-base-uncased", "unbiased": "roberta-base", "multilingual": "xlm-roberta-base",
                     "original-small": "albert-base-v2", "unbiased-small": "albert-base-v2"}


@dataclass(frozen=True)
class HubRef:
    """One thing a run config makes a library fetch by name."""

    kind: str          # model | dataset | torch_hub
    id: str            # hub repo id, or the URL torch hub downloads
    used_by: str       # which part of the config asks for it
    config: str | None = None
    data_dir: str | None = None
    split: str | None = None


def hub_refs(config) -> list[HubRef]:
    """Everything ``config`` (a RunConfig) resolves by hub id or download URL rather than a local path."""
    from detoxify.detoxify import MODEL_URLS

    from evals.suites import get_suite

    def local(ref: str) -> bool:  # a hub id is ORG/NAME: anything deeper is a path (maybe not cloned yet)
        return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1

    refs = [HubRef("model", config.model.base, "model.base")] if not local(config.model.base) else []
    for i, src in enumerate(config.data.sources):
        if not local(src.id):
            refs.append(HubRef("dataset", src.id, f"data.sources[{i}]", None, src.data_dir, src.split))
    for cfg in config.evals.suites:
        suite = get_suite(cfg.name)
        for spec, ref in suite.selected_sources(cfg):
            if ref is None and spec.hub:
                refs.append(HubRef("dataset", spec.hub, f"evals.suites[{cfg.name}].{spec.key}", spec.hub_config,
                                   spec.data_dir, spec.split))
            elif ref is not None and not local(ref):
                refs.append(HubRef("dataset", ref, f"evals.suites[{cfg.name}].{spec.key}", None, spec.data_dir,
                                   spec.split))
        for spec in suite.template_sources:
            if spec.hub:
                refs.append(HubRef("dataset", spec.hub, f"evals.suites[{cfg.name}] templates {spec.key}",
                                   spec.hub_config, spec.data_dir, spec.split))
    checkpoint = config.evals.toxicity_scorer.checkpoint
    if checkpoint in MODEL_URLS and not local(checkpoint):
        refs.append(HubRef("torch_hub", MODEL_URLS[checkpoint], f"evals.toxicity_scorer.checkpoint={checkpoint}"))
        refs.append(HubRef("model", DETOXIFY_ENCODERS[checkpoint], f"Detoxify {checkpoint}'s model_type"))
    return refs
