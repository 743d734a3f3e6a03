"""Model manifests: every file's sha256 and size, with the verdict, metrics, config and provenance.

The manifest is one file of the signed folder (``harmgate/manifest.json``); the signature (gates.trust,
gates.signer) covers its bytes along with every other file.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from harmgate.objectstore import RegistryError, sha256_file

MANIFEST_SCHEMA = "harmgate.manifest/2"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(data: Any) -> str:
    return hashlib.sha256(canonical_json(data)).hexdigest()


def safe_relpath(path: str) -> str:
    """A manifest path must stay inside the model folder once joined (no absolute paths, no ``..``)."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or "\\" in path:
        raise RegistryError(f"unsafe path in manifest: {path!r}")
    return path


def file_entries(model_dir: Path) -> list[dict[str, Any]]:
    """Sorted ``{path, sha256, size}`` for every regular file under ``model_dir`` (posix relative paths)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RegistryError(f"model folder {model_dir} does not exist")
    entries = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        entries.append({"path": safe_relpath(rel), "sha256": sha256_file(path), "size": path.stat().st_size})
    if not entries:
        raise RegistryError(f"model folder {model_dir} is empty")
    return entries


def build_manifest(model_dir: Path, *, name: str, version: str, base_model: str, verdict: dict[str, Any],
                   metrics: dict[str, Any], config: dict[str, Any], provenance: dict[str, Any],
                   git_commit: str | None, created_at: str | None = None) -> dict[str, Any]:
    return {
        "schema": MANIFEST_SCHEMA, "name": name, "version": version, "created_at": created_at or utc_now(),
        "base_model": base_model, "git_commit": git_commit, "files": file_entries(model_dir),
        "verdict": verdict, "metrics": metrics, "config": config, "provenance": provenance,
    }
