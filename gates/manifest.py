"""Model manifests (every file's sha256 and size) and HMAC-signed approval records.

The approval signs the manifest's *canonical* JSON digest (sorted keys, no whitespace), so pretty-printing
or re-serialising manifest.json does not break it, while any change to a file hash, the verdict or the
provenance does. The signature also covers name and version, so an approval cannot be copied onto
another model or version.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from gates.s3 import RegistryError, sha256_file

MANIFEST_SCHEMA = "harmgate.manifest/1"
APPROVAL_SCHEMA = "harmgate.approval/1"
SIGNATURE_ALG = "HMAC-SHA256"
MIN_KEY_BYTES = 16


class SigningKeyMissing(RegistryError):
    """No (or too short a) signing key in the environment: nothing can be approved or verified."""


class BadSignature(RegistryError):
    pass


class ManifestMismatch(BadSignature):
    """A valid approval, but of a different manifest: manifest.json changed after approval."""


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


def signing_key(env_var: str) -> bytes:
    key = os.environ.get(env_var, "")
    if len(key.encode()) < MIN_KEY_BYTES:
        state = "is not set" if not key else f"is shorter than {MIN_KEY_BYTES} bytes"
        raise SigningKeyMissing(f"the approval signing key {env_var} {state}; set it to a secret shared by the "
                                f"publisher and the service (e.g. `export {env_var}=$(openssl rand -hex 32)`)")
    return key.encode()


def _signature(key: bytes, record: dict[str, Any]) -> str:
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    return hmac.new(key, canonical_json(unsigned), hashlib.sha256).hexdigest()


def sign_approval(key: bytes, *, name: str, version: str, manifest_sha256: str) -> dict[str, Any]:
    record = {"schema": APPROVAL_SCHEMA, "name": name, "version": version, "manifest_sha256": manifest_sha256,
              "approved_at": utc_now(), "signature_alg": SIGNATURE_ALG}
    record["signature"] = _signature(key, record)
    return record


def verify_approval(key: bytes, record: Any, *, name: str, version: str, manifest_sha256: str) -> None:
    """Raise BadSignature unless ``record`` is a valid approval of exactly this manifest."""
    if not isinstance(record, dict) or not isinstance(record.get("signature"), str):
        raise BadSignature(f"{name}:{version}: approval record is malformed")
    if record.get("signature_alg") != SIGNATURE_ALG:
        raise BadSignature(f"{name}:{version}: unsupported approval signature {record.get('signature_alg')!r}")
    if not hmac.compare_digest(_signature(key, record), record["signature"]):
        raise BadSignature(f"{name}:{version}: approval signature is invalid (forged, altered, or signed "
                           f"with another key)")
    if record.get("name") != name or record.get("version") != version:
        raise BadSignature(f"{name}:{version}: approval is for {record.get('name')}:{record.get('version')}")
    if not hmac.compare_digest(str(record.get("manifest_sha256")), manifest_sha256):
        raise ManifestMismatch(f"{name}:{version}: manifest.json does not match the approved digest "
                           f"(approved {record.get('manifest_sha256')}, found {manifest_sha256})")
