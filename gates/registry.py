"""The signed model registry on S3.

Layout, one folder per immutable version::

    <prefix>/<name>/<version>/files/<relpath>   the model folder's files (sha256 in object metadata)
    <prefix>/<name>/<version>/manifest.json     files + verdict, metrics, config, provenance, git commit
    <prefix>/<name>/<version>/approval.json     HMAC over the manifest digest; written LAST
    <prefix>/<name>/<version>/revoked.json      present once revoked

Because approval.json is written last (and only with If-None-Match), a reader that sees a valid approval knows
every file was uploaded and checked. Readers trust nothing in the bucket but the signature: files are
checked against the approved manifest after download, and again each time a cached copy is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gates.manifest import (BadSignature, ManifestMismatch, SigningKeyMissing, build_manifest, digest,
                            safe_relpath, sign_approval, signing_key, utc_now, verify_approval)
from gates.s3 import ObjectExists, ObjectNotFound, ObjectStore, RegistryError, StoreUnavailable, sha256_file
from harmgate.config import StoreConfig

__all__ = ["ApprovedModel", "IntegrityError", "NotApproved", "Registry", "RegistryError", "Revoked",
           "SigningKeyMissing", "StoreUnavailable", "VersionNotFound", "remember_revoked", "revoked_in_cache"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Beside manifest.json; never one of the registry's own records.
ATTACHMENT_RE = re.compile(r"^(?!(manifest|approval|revoked)\.json$)(?!files$)[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json", ".md": "text/markdown"}
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CACHE_MARKER = ".harmgate-verified.json"


class NotApproved(RegistryError):
    """No valid approval: failed verdict at publish time, no approval record, or a bad signature."""


class Revoked(RegistryError):
    pass


class IntegrityError(RegistryError):
    """A file (or the manifest) differs from what was approved."""


class VersionNotFound(RegistryError):
    pass


@dataclass(frozen=True)
class ApprovedModel:
    name: str
    version: str
    local_dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str


def default_version() -> str:
    return datetime.now(timezone.utc).strftime("v%Y%m%dT%H%M%SZ")


def git_commit() -> str | None:
    """HEAD of the repository holding this code, if it is a git checkout with a commit."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise RegistryError(f"invalid {what} {value!r}: must match {pattern.pattern}")
    return value


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


class Registry:
    def __init__(self, store: StoreConfig, client: Any | None = None, **transfer: int) -> None:
        """``transfer``: multipart_threshold / multipart_chunksize in bytes (default 64 MiB each)."""
        self.config = store
        self.objects = ObjectStore(store, client, **transfer)
        self.prefix = store.prefix.strip("/")

    # -- layout -------------------------------------------------------------------------------------
    def _key(self, name: str, version: str, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, name, version, *parts) if p)

    def _where(self, name: str, version: str) -> str:
        return f"s3://{self.objects.bucket}/{self._key(name, version)}/ on {self.objects.endpoint}"

    # -- write --------------------------------------------------------------------------------------
    def publish(self, name: str, model_dir: Path, *, verdict: dict[str, Any], metrics: dict[str, Any],
                config: dict[str, Any], provenance: dict[str, Any], base_model: str,
                version: str | None = None, attachments: dict[str, bytes] | None = None,
                resume: bool = False) -> dict[str, Any]:
        """Files, then attachments (e.g. report.html, beside the manifest), then the manifest, then the approval.

        Attachments are listed in the manifest with their sha256, so the approval covers them too.

        ``resume``: ``version`` is this publisher's own earlier attempt (gates.publish keeps its version in the
        run directory), so objects already there are not an error. Files the store holds with the same size,
        sha256 metadata and ETag are kept, anything else is uploaded again; the unapproved manifest and
        attachments are replaced; the approval is still written last. A version already approved for exactly
        these files is returned as it is, so a rerun after any failure ends in the same approved version.
        """
        _check(NAME_RE, name, "model name")
        version = _check(VERSION_RE, version or default_version(), "version")
        for att in attachments or {}:
            _check(ATTACHMENT_RE, att, "attachment name")
        if verdict.get("passed") is not True:
            raise NotApproved(f"refusing to publish {name}:{version}: the verdict did not pass")
        key = signing_key(self.config.signing_key_env)  # fail before uploading anything
        existing = self.objects.list_keys(self._key(name, version) + "/")
        if existing and not resume:
            raise RegistryError(f"{name}:{version} already exists at {self._where(name, version)}; versions are "
                                f"immutable, publish a new one")
        manifest = build_manifest(Path(model_dir), name=name, version=version, base_model=base_model,
                                  verdict=verdict, metrics=metrics, config=config, provenance=provenance,
                                  git_commit=git_commit(),
                                  created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        if attachments:
            manifest["attachments"] = {att: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                                       for att, data in attachments.items()}
        # Round trip through JSON so the digest is of exactly what readers will parse (tuples, Paths...).
        manifest = json.loads(json.dumps(manifest, default=str))
        if self._key(name, version, "approval.json") in existing:
            return self._already_published(name, version, manifest["files"], key)
        for entry in manifest["files"]:
            self.objects.upload_file(Path(model_dir) / entry["path"], self._key(name, version, "files", entry["path"]),
                                     sha256=entry["sha256"], size=entry["size"], keep_if_stored=resume)
        manifest_sha256 = digest(manifest)
        try:
            for att, data in (attachments or {}).items():
                self._put_record(self._key(name, version, att), data, replace=resume,
                                 content_type=_CONTENT_TYPES.get(Path(att).suffix, "application/octet-stream"))
            self._put_record(self._key(name, version, "manifest.json"), _json_bytes(manifest), replace=resume)
            approval = sign_approval(key, name=name, version=version, manifest_sha256=manifest_sha256)
            self.objects.put_bytes(self._key(name, version, "approval.json"), _json_bytes(approval), create_only=True)
        except ObjectExists as err:
            raise RegistryError(f"{name}:{version} was published concurrently by someone else ({err})") from None
        return self._record(name, version, manifest, manifest_sha256, approval)

    def _put_record(self, key: str, data: bytes, *, replace: bool, content_type: str = "application/json") -> None:
        """Create-only write; with ``replace`` an earlier attempt's (unapproved) object is deleted first."""
        if replace:
            stored = self.objects.get_bytes(key)
            if stored == data:
                return
            if stored is not None:
                self.objects.delete(key)
        self.objects.put_bytes(key, data, create_only=True, content_type=content_type)

    def _record(self, name: str, version: str, manifest: dict[str, Any], manifest_sha256: str,
                approval: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "version": version, "bucket": self.objects.bucket,
                "endpoint": self.objects.endpoint, "prefix": self._key(name, version) + "/",
                "manifest_key": self._key(name, version, "manifest.json"),
                "approval_key": self._key(name, version, "approval.json"),
                "manifest_sha256": manifest_sha256, "files": len(manifest["files"]),
                "bytes": sum(e["size"] for e in manifest["files"]), "approved_at": approval["approved_at"],
                "attachments": sorted(manifest.get("attachments", {}))}

    def _already_published(self, name: str, version: str, files: list[dict[str, Any]], key: bytes) -> dict[str, Any]:
        """A resumed publish whose approval was already written (the failure came after it): the same version,
        if its approval verifies, it is not revoked and it approves exactly these files; otherwise an error."""
        where = self._where(name, version)
        manifest = self._manifest(name, version)
        approval = self.objects.get_json(self._key(name, version, "approval.json"))
        manifest_sha256 = digest(manifest)
        try:
            verify_approval(key, approval, name=name, version=version, manifest_sha256=manifest_sha256)
        except BadSignature as err:
            raise RegistryError(f"cannot resume publishing {name}:{version}: {where} holds an approval that does "
                                f"not verify ({err}); publish a new version") from None
        if manifest.get("files") != files:
            raise RegistryError(f"{name}:{version} is already approved at {where} for other files than "
                                f"this model folder's; versions are immutable, publish a new one (e.g. "
                                f"`harmgate publish RUN_DIR --version NEW`)")
        revoked = self.objects.get_json(self._key(name, version, "revoked.json"))
        if revoked is not None:
            raise Revoked(f"{name}:{version} was published and then revoked ({revoked.get('reason')}); "
                          f"a revoked version is not published again")
        return self._record(name, version, manifest, manifest_sha256, approval)

    def revoke(self, name: str, version: str, reason: str) -> dict[str, Any]:
        """Mark a version unusable; idempotent (the first revocation's record is kept)."""
        self._manifest(name, version)
        existing = self.objects.get_json(self._key(name, version, "revoked.json"))
        if existing:
            return existing
        record = {"name": name, "version": version, "reason": reason, "revoked_at": utc_now()}
        try:
            self.objects.put_bytes(self._key(name, version, "revoked.json"), _json_bytes(record), create_only=True)
        except ObjectExists:
            return self.objects.get_json(self._key(name, version, "revoked.json")) or record
        return record

    # -- read ---------------------------------------------------------------------------------------
    def _manifest(self, name: str, version: str) -> dict[str, Any]:
        _check(NAME_RE, name, "model name")
        _check(VERSION_RE, version, "version")
        manifest = self.objects.get_json(self._key(name, version, "manifest.json"))
        if manifest is None:
            raise VersionNotFound(f"{name}:{version} not found (no manifest at {self._where(name, version)})")
        return manifest

    def _approval_status(self, name: str, version: str, manifest: dict[str, Any],
                         approval: Any) -> tuple[str, str | None]:
        """("valid"|"invalid"|"missing"|"unverified", why)."""
        if approval is None:
            return "missing", "no approval record"
        try:
            key = signing_key(self.config.signing_key_env)
        except SigningKeyMissing as err:
            return "unverified", str(err)
        try:
            verify_approval(key, approval, name=name, version=version, manifest_sha256=digest(manifest))
        except BadSignature as err:
            return "invalid", str(err)
        return "valid", None

    def show(self, name: str, version: str) -> dict[str, Any]:
        manifest = self._manifest(name, version)
        approval = self.objects.get_json(self._key(name, version, "approval.json"))
        status, why = self._approval_status(name, version, manifest, approval)
        return {"name": name, "version": version, "manifest_sha256": digest(manifest), "manifest": manifest,
                "approval": approval, "approval_status": status, "approval_problem": why,
                "revoked": self.objects.get_json(self._key(name, version, "revoked.json"))}

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """Every version with a manifest, oldest first. ``approved``: an approval that is not known bad."""
        _check(NAME_RE, name, "model name")
        rows = []
        for version in self.objects.list_subprefixes(self._key(name, "") + "/"):
            if not VERSION_RE.match(version):
                continue
            manifest = self.objects.get_json(self._key(name, version, "manifest.json"))
            if manifest is None:  # an interrupted publish: files without manifest
                continue
            approval = self.objects.get_json(self._key(name, version, "approval.json"))
            status, _ = self._approval_status(name, version, manifest, approval)
            revoked = self.objects.get_json(self._key(name, version, "revoked.json"))
            rows.append({"version": version, "created_at": manifest.get("created_at"),
                         "approved": status in ("valid", "unverified"), "signature": status,
                         "approved_at": (approval or {}).get("approved_at") if isinstance(approval, dict) else None,
                         "revoked": revoked is not None, "revoked_reason": (revoked or {}).get("reason"),
                         **_manifest_digest(manifest)})
        return sorted(rows, key=lambda r: (str(r["created_at"]), r["version"]))

    def latest_approved(self, name: str) -> str | None:
        usable = [r for r in self.list_versions(name) if r["approved"] and not r["revoked"]]
        return usable[-1]["version"] if usable else None

    def fetch_attachment(self, name: str, version: str, attachment: str) -> bytes:
        """An attachment's bytes (e.g. report.html), only if the version's approval verifies and the bytes match
        the sha256 the approved manifest lists: a bucket writer cannot swap in their own page."""
        _check(ATTACHMENT_RE, attachment, "attachment name")
        manifest = self._manifest(name, version)
        approval = self.objects.get_json(self._key(name, version, "approval.json"))
        if approval is None:
            raise NotApproved(f"{name}:{version} has no approval record at {self._where(name, version)}")
        try:
            verify_approval(signing_key(self.config.signing_key_env), approval, name=name, version=version,
                            manifest_sha256=digest(manifest))
        except ManifestMismatch as err:
            raise IntegrityError(str(err)) from None
        except BadSignature as err:
            raise NotApproved(str(err)) from None
        entry = (manifest.get("attachments") or {}).get(attachment)
        if not isinstance(entry, dict):
            raise VersionNotFound(f"{name}:{version} has no attachment {attachment!r} in its manifest")
        data = self.objects.get_bytes(self._key(name, version, attachment))
        if data is None:
            raise IntegrityError(f"{name}:{version}: {attachment} is in the manifest but missing from "
                                 f"{self._where(name, version)}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry.get("sha256"):
            raise IntegrityError(f"{name}:{version}: {attachment} sha256 mismatch: approved {entry.get('sha256')}, "
                                 f"stored {actual}")
        return data

    # -- fetch --------------------------------------------------------------------------------------
    def fetch_verified(self, name: str, version: str, cache_dir: Path) -> ApprovedModel:
        """Download (or reuse) a version after checking approval, revocation and every file's hash."""
        manifest = self._manifest(name, version)
        revoked = self.objects.get_json(self._key(name, version, "revoked.json"))
        if revoked is not None:
            remember_revoked(cache_dir, name, version, str(revoked.get("reason")))
            raise Revoked(f"{name}:{version} was revoked at {revoked.get('revoked_at')}: {revoked.get('reason')}")
        if (seen := revoked_in_cache(cache_dir, name).get(version)) is not None:
            raise Revoked(f"{name}:{version} was revoked ({seen.get('reason')}, seen {seen.get('seen_at')}) and its "
                          f"revocation record has since disappeared from {self._where(name, version)}")
        approval = self.objects.get_json(self._key(name, version, "approval.json"))
        if approval is None:
            raise NotApproved(f"{name}:{version} has no approval record at {self._where(name, version)}")
        manifest_sha256 = digest(manifest)
        try:
            verify_approval(signing_key(self.config.signing_key_env), approval, name=name, version=version,
                            manifest_sha256=manifest_sha256)
        except ManifestMismatch as err:
            raise IntegrityError(str(err)) from None
        except BadSignature as err:
            raise NotApproved(str(err)) from None
        entries = _entries(manifest, name, version)

        dest = Path(cache_dir) / name / version
        marker = {"name": name, "version": version, "manifest_sha256": manifest_sha256, "verified_at": utc_now(),
                  "manifest": manifest, "approval": approval}  # enough to re-verify without the store
        if _cached_digest(dest) == manifest_sha256:
            _verify_cache(dest, entries)
            if _read_marker(dest).get("approval") != approval:  # a marker from before it held the approval
                _write_marker(dest, marker)
            return ApprovedModel(name, version, dest, manifest, manifest_sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=dest.parent))
        try:
            for entry in entries:
                target = tmp / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.objects.download_file(self._key(name, version, "files", entry["path"]), target)
                except ObjectNotFound:
                    raise IntegrityError(f"{name}:{version}: {entry['path']} is in the manifest but missing from "
                                         f"{self._where(name, version)}") from None
            _verify_dir(tmp, entries, f"{name}:{version} as downloaded from {self._where(name, version)}")
            (tmp / CACHE_MARKER).write_text(json.dumps(marker))
            if _cached_digest(dest) == manifest_sha256:  # another process finished the same download first
                _verify_cache(dest, entries)
            else:
                if dest.exists():  # an incomplete copy, or one of a manifest that is no longer approved
                    shutil.rmtree(dest)
                tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return ApprovedModel(name, version, dest, manifest, manifest_sha256)


    def cached_verified(self, name: str, cache_dir: Path, version: str | None = None) -> ApprovedModel | None:
        """The newest (or the ``version``) copy in the cache that still verifies without the store: its recorded
        approval against the recorded manifest with the signing key, every file against the manifest, and not a
        version this cache has seen revoked. None if there is none. For a start while the store is down: a
        revocation made during the outage is only seen once the store answers again (as for a running service)."""
        _check(NAME_RE, name, "model name")
        key = signing_key(self.config.signing_key_env)
        root, revoked = Path(cache_dir) / name, revoked_in_cache(cache_dir, name)
        found = []
        for folder in (sorted(root.iterdir()) if root.is_dir() else []):
            if not folder.is_dir() or not VERSION_RE.match(folder.name) or folder.name in revoked:
                continue
            if version is not None and folder.name != version:
                continue
            try:
                marker = json.loads((folder / CACHE_MARKER).read_text())
                manifest, approval = marker["manifest"], marker["approval"]
                verify_approval(key, approval, name=name, version=folder.name, manifest_sha256=digest(manifest))
                entries = _entries(manifest, name, folder.name)
            except (OSError, ValueError, KeyError, TypeError, RegistryError):
                continue  # no marker, one from before markers held the approval, or one that does not verify
            found.append((str(manifest.get("created_at")), folder, manifest, entries))
        for _, folder, manifest, entries in sorted(found, key=lambda f: f[0], reverse=True):
            try:
                _verify_cache(folder, entries)
            except IntegrityError:
                continue
            return ApprovedModel(name, folder.name, folder, manifest, digest(manifest))
        return None


REVOKED_MEMORY = ".revoked.json"  # <cache>/<name>/.revoked.json: versions this host saw revoked


def revoked_in_cache(cache_dir: Path, name: str) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((Path(cache_dir) / name / REVOKED_MEMORY).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_revoked(cache_dir: Path, name: str, version: str, reason: str) -> None:
    """Record a revocation locally, so it holds even if its record disappears from the bucket (a revocation
    is not signed: anyone who can delete objects could otherwise un-revoke a version)."""
    memory = revoked_in_cache(cache_dir, name)
    if version in memory:
        return
    memory[version] = {"reason": reason, "seen_at": utc_now()}
    path = Path(cache_dir) / name / REVOKED_MEMORY
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{REVOKED_MEMORY}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memory, indent=1))
    tmp.replace(path)


def _manifest_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a listing shows of a version besides its approval: provenance and the gate's numbers."""
    verdict = manifest.get("verdict") if isinstance(manifest.get("verdict"), dict) else {}
    files = manifest.get("files") if isinstance(manifest.get("files"), list) else []
    kpis = [{k: kpi.get(k) for k in ("name", "status", "passed", "severity", "base", "tuned")}
            for kpi in verdict.get("kpis") or [] if isinstance(kpi, dict)]
    return {"base_model": manifest.get("base_model"), "git_commit": manifest.get("git_commit"),
            "verdict_passed": verdict.get("passed"), "kpis": kpis, "files": len(files),
            "bytes": sum(e.get("size", 0) for e in files if isinstance(e, dict))}


def _entries(manifest: dict[str, Any], name: str, version: str) -> list[dict[str, Any]]:
    files = manifest.get("files")
    if manifest.get("name") != name or manifest.get("version") != version or not isinstance(files, list) or not files:
        raise IntegrityError(f"{name}:{version}: manifest is malformed or names another model")
    for e in files:
        safe_relpath(e.get("path", ""))
    return files


def _verify_cache(dest: Path, entries: list[dict[str, Any]]) -> None:
    # A cached copy that changed is not silently replaced: someone or something altered a served model.
    try:
        _verify_dir(dest, entries, f"cached copy {dest}")
    except IntegrityError as err:
        raise IntegrityError(f"{err}; delete {dest} to download it again") from None


def _cached_digest(dest: Path) -> str | None:
    return _read_marker(dest).get("manifest_sha256")


def _read_marker(dest: Path) -> dict[str, Any]:
    try:
        marker = json.loads((dest / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _write_marker(dest: Path, marker: dict[str, Any]) -> None:
    # Written beside the folder, then renamed in: a temporary file inside would fail other processes' checks.
    tmp = dest.parent / f".{dest.name}{CACHE_MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker))
    tmp.replace(dest / CACHE_MARKER)


def _verify_dir(root: Path, entries: list[dict[str, Any]], what: str) -> None:
    """Exactly the manifest's files, each with its size and sha256; raise IntegrityError naming the first problem."""
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    present.discard(CACHE_MARKER)
    expected = {e["path"] for e in entries}
    if missing := sorted(expected - present):
        raise IntegrityError(f"{what}: missing file(s) {missing}")
    if extra := sorted(present - expected):
        raise IntegrityError(f"{what}: unexpected file(s) not in the manifest {extra}")
    for e in entries:
        path = root / e["path"]
        if path.is_symlink():
            raise IntegrityError(f"{what}: {e['path']} is a symlink")
        size = path.stat().st_size
        if size != e["size"]:
            raise IntegrityError(f"{what}: {e['path']} has {size} bytes, the manifest says {e['size']}")
        actual = sha256_file(path)
        if actual != e["sha256"]:
            raise IntegrityError(f"{what}: {e['path']} sha256 mismatch: expected {e['sha256']}, got {actual}")


def format_versions(name: str, rows: list[dict[str, Any]]) -> str:
    """`harmgate registry list`: two lines per version, oldest first (readable at any terminal width)."""
    lines = [f"{name}: {len(rows)} version(s), oldest first"]
    for r in rows:
        state = f"REVOKED ({r['revoked_reason']})" if r["revoked"] else ("servable" if r["approved"] else "NOT servable")
        gate = {True: "passed", False: "FAILED"}.get(r.get("verdict_passed"), "unknown")
        lines.append(f"  {r['version']}  {str(r['created_at'])[:19]}  signature {r['signature']}  {state}  "
                     f"gate {gate}  commit {str(r.get('git_commit') or '-')[:10]}  "
                     f"{r.get('files', 0)} files {r.get('bytes', 0) / 2**20:.1f} MiB")
        kpis = [f"{k['name']}={k['tuned']:.4g}" for k in r.get("kpis", []) if isinstance(k.get("tuned"), (int, float))]
        if kpis:
            lines.append(f"      tuned: {', '.join(kpis)}")
    return "\n".join(lines)
