"""Where a suite's data comes from: a hub dataset for connected users, a file or folder in the data mirror
offline, or any local path the config names. Suites declare their sources as :class:`SourceSpec`; this module
finds them and reads their rows; the suite turns rows into items.

Resolution order for a source the config does not re-point: the mirror index (``harmgate.mirror``; a
``mirror.yaml`` can override it), then the spec's path inside the mirror, then the hub. A re-pointed source
(``sources: {key: REF}`` or ``source: REF``) goes through ``harmgate.mirror.resolve_data`` alone.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmgate.mirror import DataNotFound, ResolvedData, data_mirror_root, hub_access_hint, resolve_data


class SourceError(ValueError):
    """A source that cannot be found or read; the message names the suite, the source and the path."""


@dataclass(frozen=True)
class SourceSpec:
    key: str                       # short name: config key, breakdown group, `harmgate suites list`
    hub: str | None = None         # hub dataset id (connected users)
    mirror: str | None = None      # file or folder inside the data mirror (offline)
    split: str = "train"
    hub_config: str | None = None  # hub dataset configuration name
    data_dir: str | None = None    # hub sub-folder, e.g. harmless-base of Anthropic/hh-rlhf
    licence: str = "unknown"
    description: str = ""
    pattern: str = "*"             # files read when the mirror path is a folder
    hub_files: tuple[str, ...] = ()  # read these repo files through huggingface_hub instead of datasets

    def describe(self) -> str:
        parts = [p for p in (f"hub {self.hub}" if self.hub else "", f"mirror {self.mirror}" if self.mirror else "")
                 if p]
        return " | ".join(parts)


@dataclass
class SourceRows:
    spec: SourceSpec
    origin: dict[str, Any]            # {"path": ..., "sha256": ...} or {"hub": id, "split": ...}
    rows: list[dict[str, Any]] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        digest.update(p.read_bytes())
    return digest.hexdigest()


DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".jsonl.gz", ".txt")


def read_file_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV, JSON (a list, or an object holding one), JSONL(.gz) or TXT (one ``text`` per line)."""
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    if name.endswith(".csv"):
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if name.endswith(".jsonl"):
        rows = []
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise SourceError(f"{path} line {i}: not JSON ({err})") from None
        return rows
    if name.endswith(".json"):
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            # safety-tuned-llamas: {"instructions": [...], "tags": [...]} -> one row per instruction
            lists = {k: v for k, v in data.items() if isinstance(v, list) and v}
            if lists:
                n = max(len(v) for v in lists.values())
                return [{k: v[i] for k, v in lists.items() if len(v) == n} for i in range(n)]
            return [data]
        raise SourceError(f"{path}: JSON holds a {type(data).__name__}, not rows")
    if name.endswith(".txt"):
        with opener(path, "rt", encoding="utf-8") as f:
            return [{"text": line.rstrip("\n")} for line in f if line.strip()]
    raise SourceError(f"{path}: unsupported file type (expected {', '.join(DATA_SUFFIXES)})")


def read_path_rows(path: Path, pattern: str = "*") -> list[dict[str, Any]]:
    """A file's rows, or every matching data file's rows in a folder, each row tagged with ``_file`` (the stem)."""
    if path.is_file():
        return [{**r, "_file": path.name.split(".")[0]} if isinstance(r, dict) else r for r in read_file_rows(path)]
    files = sorted(p for p in path.glob(pattern) if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    if not files:
        raise SourceError(f"{path}: no data files matching {pattern!r}")
    rows: list[dict[str, Any]] = []
    for p in files:
        rows.extend({**r, "_file": p.name.split(".")[0]} for r in read_file_rows(p))
    return rows


def _hub_file_rows(hub_id: str, spec: SourceSpec) -> list[dict[str, Any]]:
    """Rows of named repo files, fetched (or, offline, found in the hub cache) by huggingface_hub. For repos
    ``datasets`` refuses: a loading script beside the data (GAIR/lima) fails with "Dataset scripts are no longer
    supported" on datasets >= 4 even though the data files are plain JSONL."""
    from huggingface_hub import hf_hub_download

    rows: list[dict[str, Any]] = []
    for name in spec.hub_files:
        rows.extend(read_file_rows(Path(hf_hub_download(hub_id, name, repo_type="dataset"))))
    return rows


def _hub_rows(hub_id: str, spec: SourceSpec, split: str, suite: str = "",
              mirror: str | None = None) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        if spec.hub_files:
            return _hub_file_rows(hub_id, spec)
        return list(load_dataset(hub_id, spec.hub_config, data_dir=spec.data_dir, split=split))
    except Exception as err:  # datasets raises many types offline; all mean the same to the user
        root = data_mirror_root(mirror)
        looked = (f"; {spec.mirror!r} is not in the data mirror {root}" if root and spec.mirror else
                  "" if root else "; no data mirror is set")
        raise SourceError(
            f"{f'suite {suite}, ' if suite else ''}source {spec.key!r}: {hub_id!r} is not a local file, not in the "
            f"data mirror and not reachable on the hub ({type(err).__name__}: {err}){looked}. "
            f"{hub_access_hint(hub_id, 'dataset')} Offline, set HARMGATE_DATA_MIRROR or point the source at a local "
            f"path") from None


def resolve_source(spec: SourceSpec, *, ref: str | None, mirror: str | None, suite: str = "") -> ResolvedData:
    """Where one source is: ``ref`` if the config re-points it, else the spec's hub id / mirror path."""
    try:
        if ref is not None:
            return resolve_data(ref, data_dir=spec.data_dir, split=spec.split, mirror=mirror)
        resolved = (resolve_data(spec.hub, data_dir=spec.data_dir, split=spec.split, mirror=mirror)
                    if spec.hub else None)
    except DataNotFound as err:  # the mirror maps the id to a file that is not there
        raise SourceError(f"suite {suite}, source {spec.key!r}: {err}") from None
    root = data_mirror_root(mirror)
    if (resolved is None or not resolved.is_local) and root is not None and spec.mirror:
        if (root / spec.mirror).exists():
            resolved = resolve_data(str(root / spec.mirror), split=spec.split)
    if resolved is None:
        raise SourceError(f"suite {suite}, source {spec.key!r}: no hub id and {spec.mirror!r} is not in the data "
                          f"mirror ({root or 'HARMGATE_DATA_MIRROR is not set'})")
    return resolved


def local_origin(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": _sha256(path)}


def load_source(spec: SourceSpec, *, ref: str | None, mirror: str | None, suite: str = "") -> SourceRows:
    """Rows of one source (see :func:`resolve_source` for where they come from)."""
    resolved = resolve_source(spec, ref=ref, mirror=mirror, suite=suite)
    if resolved.is_local:
        path: Path = resolved.path  # type: ignore[assignment]
        try:
            rows = read_path_rows(path, spec.pattern)
        except SourceError as err:
            raise SourceError(f"suite {suite}, source {spec.key!r}: {err}") from None
        return SourceRows(spec, local_origin(path), rows)
    rows = _hub_rows(resolved.hub_id or "", spec, spec.split, suite, mirror)
    return SourceRows(spec, {"hub": resolved.hub_id, "config": spec.hub_config, "data_dir": spec.data_dir,
                             "split": spec.split}, rows)


def where_is(spec: SourceSpec, mirror: str | None) -> str:
    """Where a source would be read from right now (for `harmgate suites list`)."""
    if spec.hub:
        resolved = resolve_data(spec.hub, data_dir=spec.data_dir, split=spec.split, mirror=mirror)
        if resolved.is_local:
            return str(resolved.path)
    root = data_mirror_root(mirror)
    if root is not None and spec.mirror and (root / spec.mirror).exists():
        return str(root / spec.mirror)
    return f"hub:{spec.hub}" if spec.hub else "missing (not in the data mirror, no hub id)"
