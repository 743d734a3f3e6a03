"""The signed model registry on S3.

Layout, one folder per immutable version, and one revocation list per model::

    <prefix>/<name>/<version>/files/<relpath>      the signed folder: the model's files, plus
        files/harmgate/manifest.json               every other file's sha256 and size, verdict, metrics, config,
                                                   provenance, git commit
        files/harmgate/verdict.json                the gate's verdict
        files/harmgate/data_manifest.json          training data provenance and licences
        files/harmgate/report.html                 the run's dashboard (when it could be rendered)
    <prefix>/<name>/<version>/model.sig            model-signing bundle over files/ (in-toto statement); LAST
    <prefix>/<name>/revocations.json               signed revocation list with a sequence number

Because model.sig is written last (and only with If-None-Match), a reader that sees a valid one knows every
file was uploaded and checked. Readers trust nothing in the bucket but signatures by keys in their trust file
(gates.trust): files are checked against the signed statement after download, and again each time a cached
copy is reused. A user verifies a downloaded version without harmgate::

    model_signing verify key files/ --signature model.sig --public_key <key id>.pub

Versions approved under the retired HMAC scheme (``manifest.json`` + ``approval.json`` beside ``files/``) are
listed as ``legacy-hmac`` and never served; ``Registry.resign`` moves one to the new scheme.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gates.manifest import build_manifest, digest, file_entries, safe_relpath, utc_now
from harmgate.objectstore import (ObjectExists, ObjectNotFound, ObjectStore, RegistryError, StoreUnavailable, stored_problems,
                      sha256_and_etag)
from gates.trust import (MANIFEST_PATH, CheckFailed, Statement, TrustError, TrustStore, trust_path,
                         verify_model_signature, verify_revocations)
from harmgate.config import StoreConfig

__all__ = ["ApprovedModel", "CheckFailed", "IntegrityError", "NotApproved", "Registry", "RegistryError", "Revoked",
           "StoreUnavailable", "TrustError", "VersionNotFound", "revoked_in_cache"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Files of the signed folder's harmgate/ records besides the manifest (report.html, ...).
ATTACHMENT_RE = re.compile(r"^(?!(manifest|verdict|data_manifest)\.json$)[A-Za-z0-9][A-Za-z0-9._-]*$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CACHE_MARKER = ".harmgate-verified.json"
RECORDS = "harmgate"  # the folder of harmgate's own records inside the signed folder
SIGNATURE = "model.sig"
REVOCATIONS = "revocations.json"
GIT_PATHS = {".git", ".gitattributes", ".github", ".gitignore"}  # model-signing's default ignore_paths
REVOCATION_MEMORY = ".revocations.json"  # <cache>/<name>/: the newest list this node accepted (+ every revocation)


class NotApproved(CheckFailed):
    """No valid signature: failed verdict at publish time, no model.sig, or one that does not verify."""


class Revoked(CheckFailed):
    check = "revocation"


class IntegrityError(CheckFailed):
    """A file (or the manifest) differs from what was signed."""

    check = "file digest"


class VersionNotFound(RegistryError):
    pass


def refusal(cls: type[CheckFailed], name: str, version: str, err: CheckFailed | str,
            check: str | None = None) -> CheckFailed:
    """``<name>:<version> refused by the <check> check: <why>``: the one line a log or a startup error shows."""
    check = check or (err.check if isinstance(err, CheckFailed) else cls.check)
    detail = err.detail if isinstance(err, CheckFailed) else str(err)
    return cls(f"{name}:{version} refused by the {check} check: {detail}", check, detail)


@dataclass(frozen=True)
class ApprovedModel:
    name: str
    version: str
    local_dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    key_id: str = ""


@dataclass(frozen=True)
class RevocationState:
    """What a node knows about revocations of one model. ``usable`` False: nothing may be served (fail closed)."""

    sequence: int | None
    revoked: dict[str, dict[str, Any]]
    problem: str | None = None
    usable: bool = True


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
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


def _stage(model_dir: Path, tree: Path) -> None:
    """The model's files under ``tree`` (hard links where the filesystem allows: no copy of the weights)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RegistryError(f"model folder {model_dir} does not exist")
    if (model_dir / RECORDS).exists():
        raise RegistryError(f"{model_dir / RECORDS} exists: that name is reserved for harmgate's signed records")
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir)
        if rel.parts[0] in GIT_PATHS:  # model-signing leaves these out of the statement: not published either
            continue
        target = tree / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


@dataclass
class _Release:
    """Everything ``_sign_and_upload`` writes for one version."""

    model_dir: Path
    records: dict[str, bytes]  # harmgate/<name> -> bytes (verdict.json, data_manifest.json, report.html, ...)
    manifest_fields: dict[str, Any]
    extra_manifest: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, store: StoreConfig, client: Any | None = None, *, trust: TrustStore | None = None,
                 **transfer: int) -> None:
        """``transfer``: multipart_threshold / multipart_chunksize in bytes (default 64 MiB each). ``trust``:
        the public keys to verify with (default: the trust file named by the store config, read on first use)."""
        self.config = store
        self.objects = ObjectStore(store, client, **transfer)
        self.prefix = store.prefix.strip("/")
        self._trust, self._fixed_trust, self._trust_stamp = trust, trust is not None, None

    def trust(self) -> TrustStore:
        """The trust file, re-read when it changes (a rotation reaches running services at their next poll)."""
        if self._fixed_trust:
            return self._trust
        path = trust_path(self.config)
        try:
            stat = path.stat()
            stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if self._trust is None or stamp != self._trust_stamp:
            self._trust, self._trust_stamp = TrustStore.load(path), stamp
        return self._trust

    # -- layout -------------------------------------------------------------------------------------
    def _key(self, name: str, version: str, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, name, version, *parts) if p)

    def _where(self, name: str, version: str) -> str:
        return f"s3://{self.objects.bucket}/{self._key(name, version)}/ on {self.objects.endpoint}"

    def file_key(self, name: str, version: str, path: str) -> str:
        return self._key(name, version, "files", path)

    def _revocations_key(self, name: str) -> str:
        return "/".join(p for p in (self.prefix, name, REVOCATIONS) if p)

    # -- write --------------------------------------------------------------------------------------
    def publish(self, name: str, model_dir: Path, *, verdict: dict[str, Any], metrics: dict[str, Any],
                config: dict[str, Any], provenance: dict[str, Any], base_model: str,
                version: str | None = None, attachments: dict[str, bytes] | None = None,
                resume: bool = False) -> dict[str, Any]:
        """Files and records, then the model.sig over all of them (written last).

        The signed folder is the model's files plus ``harmgate/`` records: manifest, verdict, data manifest and
        ``attachments`` (e.g. report.html); the statement names the manifest digest, config digest and commit.

        ``resume``: ``version`` is this publisher's own earlier attempt (gates.publish keeps its version in the
        run directory), so objects already there are not an error. Files the store holds with the same size,
        sha256 metadata and ETag are kept, anything else is uploaded again; the signature is still written last.
        A version already signed for exactly these model files is returned as it is, so a rerun after any
        failure ends in the same approved version.
        """
        _check(NAME_RE, name, "model name")
        version = _check(VERSION_RE, version or default_version(), "version")
        for att in attachments or {}:
            _check(ATTACHMENT_RE, att, "attachment name")
        if verdict.get("passed") is not True:
            raise NotApproved(f"refusing to publish {name}:{version}: the verdict did not pass", "verdict")
        records = {"verdict.json": _json_bytes(verdict), "data_manifest.json": _json_bytes(provenance),
                   **(attachments or {})}
        fields = {"base_model": base_model, "verdict": verdict, "metrics": metrics, "config": config,
                  "provenance": provenance, "git_commit": git_commit(),
                  "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        return self._sign_and_upload(name, version, _Release(Path(model_dir), records, fields), resume=resume)

    def _sign_and_upload(self, name: str, version: str, release: _Release, *, resume: bool) -> dict[str, Any]:
        from gates.signer import check_can_sign, load_signing_key, sign_folder

        key = load_signing_key(self.config)  # fail before uploading anything
        trust = self.trust()
        check_can_sign(key, trust)
        existing = self.objects.list_keys(self._key(name, version) + "/")
        if existing and not resume:
            raise RegistryError(f"{name}:{version} already exists at {self._where(name, version)}; versions are "
                                f"immutable, publish a new one")
        # Staged beside the model folder (same filesystem: hard links), removed whatever happens.
        parent = release.model_dir.parent if release.model_dir.parent.is_dir() else None
        with tempfile.TemporaryDirectory(prefix=".harmgate-sign-", dir=parent) as tmp:
            tree = Path(tmp) / name  # the folder name is the statement's subject name
            _stage(release.model_dir, tree)
            model_files = file_entries(tree)
            (tree / RECORDS).mkdir()
            for record, data in release.records.items():
                (tree / RECORDS / record).write_bytes(data)
            manifest = build_manifest(tree, name=name, version=version, **release.manifest_fields)
            manifest.update(release.extra_manifest)
            manifest["attachments"] = {att: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                                       for att, data in release.records.items()}
            manifest = json.loads(json.dumps(manifest, default=str))
            manifest_bytes = _json_bytes(manifest)
            (tree / MANIFEST_PATH).write_bytes(manifest_bytes)
            if self._key(name, version, SIGNATURE) in existing:
                return self._already_published(name, version, model_files)
            # Model files first, harmgate's records next, the manifest last: an interrupted publish leaves no
            # manifest, so listings skip it.
            order = sorted(file_entries(tree), key=lambda e: (e["path"] == MANIFEST_PATH,
                                                              e["path"].startswith(RECORDS + "/"), e["path"]))
            for entry in order:
                self.objects.upload_file(tree / entry["path"], self.file_key(name, version, entry["path"]),
                                         sha256=entry["sha256"], size=entry["size"], keep_if_stored=resume)
            manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
            statement_meta = {"name": name, "version": version, "manifest_sha256": manifest_sha256,
                              "config_sha256": digest(manifest.get("config")), "git_commit": manifest.get("git_commit"),
                              "base_model": manifest.get("base_model"), "signed_at": utc_now(),
                              "verdict_passed": (manifest.get("verdict") or {}).get("passed")}
            signature = sign_folder(tree, key, statement_meta)
        statement = verify_model_signature(signature, trust, name=name, version=version)  # never upload a dud
        self._ensure_revocations(name, key)
        try:
            self.objects.put_bytes(self._key(name, version, SIGNATURE), signature, create_only=True)
        except ObjectExists as err:
            raise RegistryError(f"{name}:{version} was published concurrently by someone else ({err})") from None
        return self._record(name, version, manifest, manifest_sha256, statement)

    def _record(self, name: str, version: str, manifest: dict[str, Any], manifest_sha256: str,
                statement: Statement) -> dict[str, Any]:
        return {"name": name, "version": version, "bucket": self.objects.bucket,
                "endpoint": self.objects.endpoint, "prefix": self._key(name, version) + "/",
                "files_prefix": self._key(name, version, "files") + "/",
                "manifest_key": self.file_key(name, version, MANIFEST_PATH),
                "signature_key": self._key(name, version, SIGNATURE), "key_id": statement.key_id,
                "manifest_sha256": manifest_sha256, "files": len(manifest["files"]),
                "bytes": sum(e["size"] for e in manifest["files"]),
                "approved_at": statement.harmgate.get("signed_at"),
                "attachments": sorted(a for a in manifest.get("attachments", {}) if not a.endswith(".json"))}

    def _already_published(self, name: str, version: str, model_files: list[dict[str, Any]]) -> dict[str, Any]:
        """A resumed publish whose signature was already written (the failure came after it): the same version,
        if its signature verifies, it is not revoked and it signs exactly these model files; otherwise an error."""
        where = self._where(name, version)
        try:
            statement, manifest, manifest_sha256 = self._verified_manifest(name, version)
        except CheckFailed as err:
            raise RegistryError(f"cannot resume publishing {name}:{version}: {where} holds a signature that does "
                                f"not verify ({err}); publish a new version") from None
        signed_model = {p: d for p, d in statement.resources.items() if not p.startswith(RECORDS + "/")}
        if signed_model != {e["path"]: e["sha256"] for e in model_files}:
            raise RegistryError(f"{name}:{version} is already signed at {where} for other files than "
                                f"this model folder's; versions are immutable, publish a new one (e.g. "
                                f"`harmgate publish RUN_DIR --version NEW`)")
        revoked = self.revocation_state(name).revoked.get(version)
        if revoked is not None:
            raise Revoked(f"{name}:{version} was published and then revoked ({revoked.get('reason')}); "
                          f"a revoked version is not published again")
        return self._record(name, version, manifest, manifest_sha256, statement)

    # -- revocation -----------------------------------------------------------------------------------
    def _ensure_revocations(self, name: str, key: Any) -> None:
        """A model's first publish writes its (empty) signed revocation list: a node that then finds none can
        only conclude it was deleted, and refuses to serve rather than guess (see revocation_state)."""
        from gates.signer import sign_revocations

        if not self.objects.exists(self._revocations_key(name)):
            try:
                self.objects.put_bytes(self._revocations_key(name),
                                       sign_revocations(key, name=name, sequence=1, revoked={}), create_only=True)
            except ObjectExists:
                pass

    def revoke(self, name: str, version: str, reason: str, *, sequence: int | None = None) -> dict[str, Any]:
        """Add ``version`` to the signed revocation list (sequence + 1); idempotent. ``sequence``: the new list's
        number when the stored one cannot be trusted (it must exceed every number ever issued)."""
        from gates.signer import check_can_sign, load_signing_key, sign_revocations

        self._require_version(name, version)
        key = load_signing_key(self.config)
        check_can_sign(key, self.trust())
        raw = self.objects.get_bytes(self._revocations_key(name))
        current, revoked = 0, {}
        if raw is not None:
            try:
                listed = verify_revocations(raw, self.trust(), name=name)
                current, revoked = listed.sequence, dict(listed.revoked)
            except CheckFailed as err:
                if sequence is None:
                    raise RegistryError(f"the stored revocation list of {name} does not verify ({err}); someone "
                                        f"wrote to the bucket. Rerun with --sequence N above every sequence ever "
                                        f"issued (nodes refuse lists older than the newest they saw)") from None
        elif sequence is None and self.objects.list_subprefixes(self._key(name, "") + "/"):
            raise RegistryError(f"no revocation list for {name} although versions exist: it was deleted. Rerun "
                                f"with --sequence N above every sequence ever issued")
        if version in revoked:
            return {"name": name, "version": version, "sequence": current, **revoked[version]}
        revoked[version] = {"reason": reason, "revoked_at": utc_now()}
        new_sequence = max(current, sequence or 0) + 1
        self.objects.put_bytes(self._revocations_key(name),
                               sign_revocations(key, name=name, sequence=new_sequence, revoked=revoked))
        return {"name": name, "version": version, "sequence": new_sequence, **revoked[version]}

    def revocation_state(self, name: str, cache_dir: Path | None = None) -> RevocationState:
        """The revocations this reader may rely on.

        With ``cache_dir`` (a serving node) the newest accepted list is remembered in
        ``<cache>/<name>/.revocations.json``: a list with a lower sequence (a replay) or the same sequence but
        other content is refused, and a deleted list leaves the remembered one in force. Revocations are sticky:
        a version this node saw revoked stays revoked. A node that has never accepted a list and finds none (or
        only a bad one) fails closed: ``usable`` False, nothing is served, because a missing list looks exactly
        like a deleted one.
        """
        where = f"s3://{self.objects.bucket}/{self._revocations_key(name)}"
        raw = self.objects.get_bytes(self._revocations_key(name))
        memory = _read_revocation_memory(cache_dir, name) if cache_dir is not None else None
        problem, listed = None, None
        if raw is None:
            problem = f"no signed revocation list at {where} (deleted?)"
        else:
            try:
                listed = verify_revocations(raw, self.trust(), name=name)
            except (CheckFailed, TrustError) as err:
                problem = f"revocation list at {where} refused: {err}"
        if listed is not None and memory is not None:
            seen = memory["sequence"]
            if listed.sequence < seen:
                problem, listed = (f"replayed old revocation list refused: {where} has sequence {listed.sequence}, "
                                   f"this node already accepted sequence {seen}"), None
            elif listed.sequence == seen and digest(listed.revoked) != memory.get("digest"):
                problem, listed = (f"revocation list refused: {where} has sequence {seen} with other content than "
                                   f"the list of that sequence this node accepted"), None
        if listed is not None:
            revoked = {**(memory or {}).get("revoked", {}), **listed.revoked}
            if cache_dir is not None and (memory is None or listed.sequence > memory["sequence"]):
                _write_revocation_memory(cache_dir, name, {"sequence": listed.sequence, "digest": digest(listed.revoked),
                                                           "revoked": revoked, "accepted_at": utc_now()})
            return RevocationState(listed.sequence, revoked)
        if memory is not None:
            return RevocationState(memory["sequence"], memory.get("revoked", {}),
                                   f"{problem}; using the list this node last accepted (sequence {memory['sequence']})")
        return RevocationState(None, {}, f"{problem}; with no list accepted before, this node cannot tell whether "
                                         f"any version was revoked, so it serves none (fail closed)",
                               usable=cache_dir is None and raw is None)

    # -- read ---------------------------------------------------------------------------------------
    def _require_version(self, name: str, version: str) -> None:
        _check(NAME_RE, name, "model name")
        _check(VERSION_RE, version, "version")
        if not (self.objects.exists(self.file_key(name, version, MANIFEST_PATH))
                or self.objects.exists(self._key(name, version, "manifest.json"))):  # an HMAC-era version
            raise VersionNotFound(f"{name}:{version} not found (no manifest at {self._where(name, version)})")

    def _manifest_bytes(self, name: str, version: str) -> bytes | None:
        return self.objects.get_bytes(self.file_key(name, version, MANIFEST_PATH))

    def _statement(self, name: str, version: str) -> Statement:
        """The verified statement of a version; NotApproved naming the failed check otherwise."""
        signature = self.objects.get_bytes(self._key(name, version, SIGNATURE))
        if signature is None:
            if self.objects.exists(self._key(name, version, "approval.json")):
                raise refusal(NotApproved, name, version, "approved under the retired HMAC scheme, which harmgate no "
                              f"longer accepts; re-sign it: `harmgate registry resign {name} {version}`",
                              "legacy approval")
            raise refusal(NotApproved, name, version, f"no signature ({SIGNATURE}) at {self._where(name, version)}: "
                          "a publish not finished, or stopped by a failure (rerunning it completes it)")
        try:
            return verify_model_signature(signature, self.trust(), name=name, version=version)
        except CheckFailed as err:
            raise refusal(NotApproved, name, version, err) from None

    def _verified_manifest(self, name: str, version: str) -> tuple[Statement, dict[str, Any], str]:
        statement = self._statement(name, version)
        raw = self._manifest_bytes(name, version)
        if raw is None:
            raise refusal(IntegrityError, name, version, f"{MANIFEST_PATH} is signed but missing from "
                          f"{self._where(name, version)}", "manifest digest")
        actual = hashlib.sha256(raw).hexdigest()
        if actual != statement.resources.get(MANIFEST_PATH):
            raise refusal(IntegrityError, name, version, f"{MANIFEST_PATH} was changed after signing (signed "
                          f"{statement.resources.get(MANIFEST_PATH)}, stored {actual})", "manifest digest")
        return statement, json.loads(raw), actual

    def _signature_status(self, name: str, version: str) -> tuple[str, str | None, str | None, str | None]:
        """(valid|invalid|missing|unverified|legacy-hmac, failed check, why, key id)."""
        try:
            statement, _, _ = self._verified_manifest(name, version)
        except TrustError as err:
            return "unverified", None, str(err), None
        except CheckFailed as err:
            state = {"legacy approval": "legacy-hmac"}.get(err.check, "invalid")
            if err.detail.startswith(f"no signature ({SIGNATURE})"):
                state = "missing"
            return state, err.check, err.detail, None
        return "valid", None, None, statement.key_id

    def _listed_manifest(self, name: str, version: str) -> dict[str, Any] | None:
        raw = self._manifest_bytes(name, version)
        if raw is None:  # a version from before the key-pair scheme keeps its manifest beside files/
            return self.objects.get_json(self._key(name, version, "manifest.json"))
        try:
            manifest = json.loads(raw)
        except ValueError:
            return {}
        return manifest if isinstance(manifest, dict) else {}

    def show(self, name: str, version: str) -> dict[str, Any]:
        self._require_version(name, version)
        manifest = self._listed_manifest(name, version)
        if manifest is None:
            raise VersionNotFound(f"{name}:{version} has no manifest at {self._where(name, version)}")
        status, check, why, kid = self._signature_status(name, version)
        statement = None
        if status == "valid":
            statement = self._statement(name, version).harmgate
        rev = self.revocation_state(name)
        raw = self._manifest_bytes(name, version)
        return {"name": name, "version": version, "manifest": manifest, "signature_status": status,
                "manifest_sha256": hashlib.sha256(raw).hexdigest() if raw is not None else None,
                "check": check, "problem": why, "key_id": kid, "statement": statement,
                "revoked": rev.revoked.get(version), "revocation_problem": rev.problem}

    def list_versions(self, name: str, cache_dir: Path | None = None) -> list[dict[str, Any]]:
        """Every version with a manifest, oldest first. ``approved``: a signature that is not known bad.
        ``cache_dir``: revocations as a serving node sees them (rollback protection, fail closed)."""
        _check(NAME_RE, name, "model name")
        rev = self.revocation_state(name, cache_dir)
        rows = []
        for version in self.objects.list_subprefixes(self._key(name, "") + "/"):
            if not VERSION_RE.match(version):
                continue
            manifest = self._listed_manifest(name, version)
            if manifest is None:  # an interrupted publish: files without manifest
                continue
            status, check, why, kid = self._signature_status(name, version)
            revoked = rev.revoked.get(version)
            rows.append({"version": version, "created_at": manifest.get("created_at"),
                         "approved": status in ("valid", "unverified"), "signature": status, "check": check,
                         "problem": why, "key_id": kid, "revoked": revoked is not None,
                         "revoked_reason": (revoked or {}).get("reason"),
                         "revocations_usable": rev.usable, "revocation_problem": rev.problem,
                         **_manifest_digest(manifest)})
        return sorted(rows, key=lambda r: (str(r["created_at"]), r["version"]))

    def latest_approved(self, name: str) -> str | None:
        usable = [r for r in self.list_versions(name) if r["approved"] and not r["revoked"]]
        return usable[-1]["version"] if usable else None

    def fetch_attachment(self, name: str, version: str, attachment: str) -> bytes:
        """A signed record's bytes (e.g. report.html), only if the version's signature verifies and the bytes
        match the statement: a bucket writer cannot swap in their own page."""
        _check(ATTACHMENT_RE, attachment, "attachment name")
        statement = self._statement(name, version)
        path = f"{RECORDS}/{attachment}"
        if path not in statement.resources:
            raise VersionNotFound(f"{name}:{version} has no signed {path}")
        data = self.objects.get_bytes(self.file_key(name, version, path))
        if data is None:
            raise refusal(IntegrityError, name, version, f"{path} is signed but missing from "
                          f"{self._where(name, version)}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != statement.resources[path]:
            raise refusal(IntegrityError, name, version, f"{path} sha256 mismatch: signed "
                          f"{statement.resources[path]}, stored {actual}")
        return data

    # -- fetch --------------------------------------------------------------------------------------
    def fetch_verified(self, name: str, version: str, cache_dir: Path) -> ApprovedModel:
        """Download (or reuse) a version after checking revocation, signature, manifest and every file's hash."""
        self._require_version(name, version)
        statement, manifest, manifest_sha256 = self._verified_manifest(name, version)
        rev = self.revocation_state(name, cache_dir)
        if not rev.usable:
            raise refusal(Revoked, name, version, rev.problem or "no usable revocation list")
        if version in rev.revoked:
            seen = rev.revoked[version]
            raise refusal(Revoked, name, version, f"revoked at {seen.get('revoked_at')}: {seen.get('reason')}")
        entries = _entries(statement, manifest, name, version)

        dest = Path(cache_dir) / name / version
        signature = self.objects.get_bytes(self._key(name, version, SIGNATURE)) or b""
        marker = {"name": name, "version": version, "manifest_sha256": manifest_sha256, "verified_at": utc_now(),
                  "key_id": statement.key_id, "signature": signature.decode()}  # re-verifiable without the store
        if _cached_digest(dest) == manifest_sha256:
            try:
                objects = _verify_cache(dest, entries, self._etag)
            except IntegrityError as err:
                raise refusal(IntegrityError, name, version, err) from None
            if _read_marker(dest).get("signature") != marker["signature"] or "objects" not in _read_marker(dest):
                _write_marker(dest, {**marker, "objects": objects})
            return ApprovedModel(name, version, dest, manifest, manifest_sha256, statement.key_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=dest.parent))
        try:
            for entry in entries:
                target = tmp / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.objects.download_file(self.file_key(name, version, entry["path"]), target)
                except ObjectNotFound:
                    raise refusal(IntegrityError, name, version, f"{entry['path']} is signed but missing from "
                                  f"{self._where(name, version)}") from None
            try:
                objects = _verify_dir(tmp, entries, f"as downloaded from {self._where(name, version)}", self._etag)
            except IntegrityError as err:
                raise refusal(IntegrityError, name, version, err) from None
            (tmp / CACHE_MARKER).write_text(json.dumps({**marker, "objects": objects}))
            if _cached_digest(dest) == manifest_sha256:  # another process finished the same download first
                _verify_cache(dest, entries, self._etag)
            else:
                if dest.exists():  # an incomplete copy, or one of a manifest that is no longer approved
                    shutil.rmtree(dest)
                tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return ApprovedModel(name, version, dest, manifest, manifest_sha256, statement.key_id)

    def _etag(self, path: Path) -> tuple[str, str]:
        return sha256_and_etag(path, multipart_threshold=self.objects.multipart_threshold,
                               chunksize=self.objects.multipart_chunksize)

    def bucket_drift(self, model: ApprovedModel) -> list[str]:
        """How the bucket's copy of a served version differs from the verified cached copy (empty: it does not).

        The cached copy is still what was signed (it was verified), so it stays served; the operator should hear
        that someone wrote to the bucket. Compares model.sig's bytes and each file object's size, sha256
        metadata and ETag (S3's MD5) with what was recorded when the copy was verified."""
        marker = _read_marker(model.local_dir)
        problems = []
        signature = self.objects.get_bytes(self._key(model.name, model.version, SIGNATURE))
        if signature is None:
            problems.append(f"{SIGNATURE} deleted")
        elif marker.get("signature") is not None and signature.decode(errors="replace") != marker["signature"]:
            problems.append(f"{SIGNATURE} changed")
        for path, recorded in sorted((marker.get("objects") or {}).items()):
            head = self.objects.head(self.file_key(model.name, model.version, path))
            if head is None:
                problems.append(f"files/{path} deleted")
                continue
            if wrong := stored_problems(head, **recorded):
                problems.append(f"files/{path} changed ({'; '.join(wrong)})")
        return problems

    def cached_verified(self, name: str, cache_dir: Path, version: str | None = None) -> ApprovedModel | None:
        """The newest (or the ``version``) copy in the cache that still verifies without the store: its recorded
        signature with the trust file (key still valid), the manifest and every file against the statement, and
        not a version this cache has seen revoked. None if there is none. For a start while the store is down: a
        revocation made during the outage is only seen once the store answers again (as for a running service)."""
        _check(NAME_RE, name, "model name")
        trust = self.trust()
        root, revoked = Path(cache_dir) / name, revoked_in_cache(cache_dir, name)
        found = []
        for folder in (sorted(root.iterdir()) if root.is_dir() else []):
            if not folder.is_dir() or not VERSION_RE.match(folder.name) or folder.name in revoked:
                continue
            if version is not None and folder.name != version:
                continue
            try:
                marker = json.loads((folder / CACHE_MARKER).read_text())
                statement = verify_model_signature(marker["signature"].encode(), trust, name=name,
                                                   version=folder.name)
                raw = (folder / MANIFEST_PATH).read_bytes()
                if hashlib.sha256(raw).hexdigest() != statement.resources.get(MANIFEST_PATH):
                    continue
                manifest = json.loads(raw)
                entries = _entries(statement, manifest, name, folder.name)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RegistryError):
                continue  # no marker, one from before signatures, or one that does not verify
            found.append((str(manifest.get("created_at")), folder, manifest, entries, statement))
        for _, folder, manifest, entries, statement in sorted(found, key=lambda f: f[0], reverse=True):
            try:
                _verify_cache(folder, entries, self._etag)
            except IntegrityError:
                continue
            return ApprovedModel(name, folder.name, folder, manifest,
                                 statement.resources[MANIFEST_PATH], statement.key_id)
        return None

    def download(self, name: str, version: str, out: Path) -> tuple[Path, Path]:
        """The version as stored, unverified: ``out/files/`` (the signed folder) and ``out/model.sig``, for a
        verifier that is not harmgate (``model_signing verify key out/files --signature out/model.sig ...``)."""
        self._require_version(name, version)
        out = Path(out)
        prefix = self._key(name, version, "files") + "/"
        for key in self.objects.list_keys(prefix):
            target = out / "files" / safe_relpath(key[len(prefix):])
            target.parent.mkdir(parents=True, exist_ok=True)
            self.objects.download_file(key, target)
        try:
            self.objects.download_file(self._key(name, version, SIGNATURE), out / SIGNATURE)
        except ObjectNotFound:
            raise refusal(NotApproved, name, version, f"no signature ({SIGNATURE})") from None
        return out / "files", out / SIGNATURE

    # -- migration from the HMAC scheme -------------------------------------------------------------
    def resign(self, name: str, version: str, *, hmac_key: bytes | None = None,
               progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
        """Sign a version again with the current key: after a rotation (signed by a retired key still in its grace
        period), or to move a version approved under the retired HMAC scheme (``hmac_key``: the old key; default
        ``$HARMGATE_HMAC_KEY``) to a model-signing signature. Either way the old approval must verify and every
        file is downloaded and checked against what it approved before anything is signed; a revoked version is
        not re-signed. The revocation list is re-signed with the current key too if another key signed it."""
        self._require_version(name, version)
        if self.objects.exists(self._key(name, version, SIGNATURE)):
            return self._resign_signed(name, version, progress)
        return self._resign_legacy(name, version, hmac_key, progress)

    def _resign_signed(self, name: str, version: str, progress: Callable[[str], None]) -> dict[str, Any]:
        from gates.signer import check_can_sign, load_signing_key, sign_folder, sign_revocations

        key = load_signing_key(self.config)
        check_can_sign(key, self.trust())
        statement, manifest, manifest_sha256 = self._verified_manifest(name, version)
        if self.revocation_state(name).revoked.get(version) is not None:
            raise Revoked(f"{name}:{version} is revoked; not re-signed")
        if statement.key_id != key.key_id:
            entries = _entries(statement, manifest, name, version)
            with tempfile.TemporaryDirectory(prefix=".harmgate-resign-") as tmp:
                tree = Path(tmp) / name
                for entry in entries:
                    target = tree / entry["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    progress(f"downloading {entry['path']}")
                    self.objects.download_file(self.file_key(name, version, entry["path"]), target)
                try:
                    _verify_dir(tree, entries, f"{name}:{version} as stored", self._etag)
                except IntegrityError as err:
                    raise refusal(IntegrityError, name, version, err) from None
                meta = {**statement.harmgate, "signed_at": utc_now(), "resigned_from_key": statement.key_id}
                signature = sign_folder(tree, key, meta)
            statement = verify_model_signature(signature, self.trust(), name=name, version=version)
            self.objects.put_bytes(self._key(name, version, SIGNATURE), signature)  # replaces the old key's
        raw = self.objects.get_bytes(self._revocations_key(name))
        if raw is not None:
            listed = verify_revocations(raw, self.trust(), name=name)
            if listed.key_id != key.key_id:
                self.objects.put_bytes(self._revocations_key(name), sign_revocations(
                    key, name=name, sequence=listed.sequence + 1, revoked=dict(listed.revoked)))
        return self._record(name, version, manifest, manifest_sha256, statement)

    def _resign_legacy(self, name: str, version: str, hmac_key: bytes | None,
                       progress: Callable[[str], None]) -> dict[str, Any]:
        from gates.legacy_hmac import verify_legacy_approval

        from gates.legacy_hmac import hmac_key as legacy_key

        legacy = self.objects.get_json(self._key(name, version, "manifest.json"))
        if not isinstance(legacy, dict):
            raise VersionNotFound(f"{name}:{version} has no HMAC-era manifest.json at {self._where(name, version)}")
        approval = self.objects.get_json(self._key(name, version, "approval.json"))
        verify_legacy_approval(hmac_key or legacy_key(), approval, name=name, version=version,
                               manifest_sha256=digest(legacy))
        if (old := self.objects.get_json(self._key(name, version, "revoked.json"))) is not None:
            raise Revoked(f"{name}:{version} was revoked under the old scheme ({old.get('reason')}); not re-signed")
        if self.revocation_state(name).revoked.get(version) is not None:
            raise Revoked(f"{name}:{version} is revoked; not re-signed")
        entries = legacy.get("files")
        if not isinstance(entries, list) or not entries:
            raise IntegrityError(f"{name}:{version}: the HMAC-era manifest lists no files", "manifest digest")
        with tempfile.TemporaryDirectory(prefix=".harmgate-resign-") as tmp:
            model_dir = Path(tmp) / "model"
            for entry in entries:
                target = model_dir / safe_relpath(entry["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                progress(f"downloading {entry['path']}")
                self.objects.download_file(self.file_key(name, version, entry["path"]), target)
            _verify_dir(model_dir, entries, f"{name}:{version} (HMAC-era files)", self._etag)
            records = {"verdict.json": _json_bytes(legacy.get("verdict")),
                       "data_manifest.json": _json_bytes(legacy.get("provenance"))}
            for att, info in (legacy.get("attachments") or {}).items():
                data = self.objects.get_bytes(self._key(name, version, att))
                if data is None or hashlib.sha256(data).hexdigest() != (info or {}).get("sha256"):
                    raise IntegrityError(f"{name}:{version}: {att} is missing or differs from the HMAC-approved "
                                         f"manifest", "file digest")
                records[att] = data
            fields = {k: legacy.get(k) for k in ("base_model", "verdict", "metrics", "config", "provenance",
                                                 "git_commit", "created_at")}
            migrated = {"migrated_from": {"scheme": "HMAC-SHA256", "manifest_sha256": digest(legacy),
                                          "approved_at": approval.get("approved_at"), "resigned_at": utc_now()}}
            return self._sign_and_upload(name, version, _Release(model_dir, records, fields, migrated), resume=True)


def _revocation_memory_path(cache_dir: Path, name: str) -> Path:
    return Path(cache_dir) / name / REVOCATION_MEMORY


def _read_revocation_memory(cache_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads(_revocation_memory_path(cache_dir, name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sequence"), int) else None


def _write_revocation_memory(cache_dir: Path, name: str, data: dict[str, Any]) -> None:
    path = _revocation_memory_path(cache_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{REVOCATION_MEMORY}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def revoked_in_cache(cache_dir: Path, name: str) -> dict[str, dict[str, Any]]:
    """Versions this cache's node has seen revoked (from every list it accepted): version -> {reason, ...}."""
    memory = _read_revocation_memory(cache_dir, name)
    return dict(memory.get("revoked") or {}) if memory else {}


def _manifest_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a listing shows of a version besides its approval: provenance and the gate's numbers."""
    verdict = manifest.get("verdict") if isinstance(manifest.get("verdict"), dict) else {}
    files = manifest.get("files") if isinstance(manifest.get("files"), list) else []
    kpis = [{k: kpi.get(k) for k in ("name", "status", "passed", "severity", "base", "tuned")}
            for kpi in verdict.get("kpis") or [] if isinstance(kpi, dict)]
    return {"base_model": manifest.get("base_model"), "git_commit": manifest.get("git_commit"),
            "verdict_passed": verdict.get("passed"), "kpis": kpis, "files": len(files),
            "bytes": sum(e.get("size", 0) for e in files if isinstance(e, dict))}


def _entries(statement: Statement, manifest: Any, name: str, version: str) -> list[dict[str, Any]]:
    """The files to fetch and check: the manifest's list, which must be exactly the statement's, plus the
    manifest itself (its digest from the statement)."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("name") != name or manifest.get("version") != version or not isinstance(files, list) or not files:
        raise refusal(IntegrityError, name, version, "the signed manifest is malformed or names another model",
                      "manifest digest")
    listed = {str(e.get("path")): e for e in files if isinstance(e, dict)}
    for path in listed:
        safe_relpath(path)
    if (set(listed) | {MANIFEST_PATH}) != set(statement.resources):
        differ = sorted(set(listed) ^ (set(statement.resources) - {MANIFEST_PATH}))
        raise refusal(IntegrityError, name, version, f"the signed statement and the manifest list different files "
                      f"({differ[:5]})", "manifest digest")
    for path, entry in listed.items():
        if entry.get("sha256") != statement.resources[path]:
            raise refusal(IntegrityError, name, version, f"the manifest's sha256 of {path} is not the signed one",
                          "manifest digest")
    return [{"path": p, "sha256": e["sha256"], "size": e.get("size")} for p, e in listed.items()] + \
        [{"path": MANIFEST_PATH, "sha256": statement.resources[MANIFEST_PATH], "size": None}]


def _verify_cache(dest: Path, entries: list[dict[str, Any]], etag: Callable[[Path], tuple[str, str]]) -> dict:
    # A cached copy that changed is not silently replaced: someone or something altered a served model.
    try:
        return _verify_dir(dest, entries, f"cached copy {dest}", etag)
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


def _verify_dir(root: Path, entries: list[dict[str, Any]], what: str,
                etag: Callable[[Path], tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Exactly the listed files, each with its size and sha256; raise IntegrityError naming the first problem.
    Returns each file's size, sha256 and S3 ETag (for ``Registry.bucket_drift``)."""
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    present.discard(CACHE_MARKER)
    expected = {e["path"] for e in entries}
    if missing := sorted(expected - present):
        raise IntegrityError(f"{what}: missing file(s) {missing}")
    if extra := sorted(present - expected):
        raise IntegrityError(f"{what}: unexpected file(s) not in the signed statement {extra}")
    seen = {}
    for e in entries:
        path = root / e["path"]
        if path.is_symlink():
            raise IntegrityError(f"{what}: {e['path']} is a symlink")
        size = path.stat().st_size
        if e.get("size") is not None and size != e["size"]:
            raise IntegrityError(f"{what}: {e['path']} has {size} bytes, the manifest says {e['size']}")
        actual, tag = etag(path)
        if actual != e["sha256"]:
            raise IntegrityError(f"{what}: {e['path']} sha256 mismatch: signed {e['sha256']}, got {actual}")
        seen[e["path"]] = {"size": size, "sha256": actual, "etag": tag}
    return seen


def format_versions(name: str, rows: list[dict[str, Any]]) -> str:
    """`harmgate registry list`: two lines per version, oldest first (readable at any terminal width)."""
    lines = [f"{name}: {len(rows)} version(s), oldest first"]
    if rows and rows[0].get("revocation_problem"):
        lines.append(f"  revocations: {rows[0]['revocation_problem']}")
    for r in rows:
        state = f"REVOKED ({r['revoked_reason']})" if r["revoked"] else ("servable" if r["approved"] else "NOT servable")
        signature = r["signature"] + (f" ({r['check']} check)" if r.get("check") else "")
        gate = {True: "passed", False: "FAILED"}.get(r.get("verdict_passed"), "unknown")
        lines.append(f"  {r['version']}  {str(r['created_at'])[:19]}  signature {signature}  {state}  "
                     f"gate {gate}  commit {str(r.get('git_commit') or '-')[:10]}  "
                     f"{r.get('files', 0)} files {r.get('bytes', 0) / 2**20:.1f} MiB")
        kpis = [f"{k['name']}={k['tuned']:.4g}" for k in r.get("kpis", []) if isinstance(k.get("tuned"), (int, float))]
        if kpis:
            lines.append(f"      tuned: {', '.join(kpis)}")
    return "\n".join(lines)
