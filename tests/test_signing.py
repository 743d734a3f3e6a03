"""Keys by role and the migration from HMAC approvals: `harmgate keys` (generate, list, rotate, export), trust file
errors, no signing code in the serving path, and `harmgate registry resign` of a version approved the old way
(against the real SeaweedFS and the running service)."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gates.keys import generate, rotate
from gates.legacy_hmac import APPROVAL_SCHEMA, SIGNATURE_ALG, legacy_signature
from gates.manifest import digest, file_entries, utc_now
from gates.registry import NotApproved, Registry
from gates.trust import TrustError, TrustStore
from harmgate.cli import app
from tests.reliability_support import CHAT, live_service, service_config
from tests.test_serve import REPO_ROOT, publish

runner = CliRunner()


def test_keys_generate_list_rotate_export(tmp_path):
    keys = tmp_path / "keys"
    done = runner.invoke(app, ["keys", "generate", "--dir", str(keys), "--label", "ci-2026"])
    assert done.exit_code == 0, done.output
    private = keys / "signing.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600, "the private key is readable by its owner only"
    trust_text = (keys / "trust.json").read_text()
    assert "PRIVATE" not in trust_text and "BEGIN PUBLIC KEY" in trust_text
    [first] = TrustStore.load(keys / "trust.json").keys.values()
    assert first.status == "active" and first.algorithm == "ecdsa-p256-sha256" and first.label == "ci-2026"
    again = runner.invoke(app, ["keys", "generate", "--dir", str(keys)])
    assert again.exit_code == 2 and "keys rotate" in again.output, "never overwrites a signing key"

    before = private.read_bytes()
    done = runner.invoke(app, ["keys", "rotate", "--dir", str(keys), "--grace-days", "30", "--label", "next"])
    assert done.exit_code == 0, done.output
    assert private.read_bytes() != before and stat.S_IMODE(private.stat().st_mode) == 0o600
    trust = TrustStore.load(keys / "trust.json")
    old, new = trust.keys[first.key_id], next(k for k in trust.keys.values() if k.key_id != first.key_id)
    assert old.status == "retired" and old.valid_until is not None and new.status == "active"
    assert (old.valid_until - new.valid_from).days in (29, 30)

    listed = runner.invoke(app, ["keys", "list", "--trust-file", str(keys / "trust.json")])
    assert listed.exit_code == 0 and "2 key(s)" in listed.output
    assert first.key_id[:16] in listed.output and "retired" in listed.output and "verifies" in listed.output

    pem = tmp_path / "old.pub"
    done = runner.invoke(app, ["keys", "export", first.key_id[:12], "--trust-file", str(keys / "trust.json"),
                               "--out", str(pem)])
    assert done.exit_code == 0 and pem.read_bytes() == (keys / f"{first.key_id[:16]}.pub").read_bytes()


def test_trust_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "trust.json"
    path.write_text("{not json")
    with pytest.raises(TrustError, match="not valid JSON"):
        TrustStore.load(path)
    path.write_text(json.dumps({"keys": []}))
    with pytest.raises(TrustError, match="is not a harmgate.trust/1 trust file"):
        TrustStore.load(path)
    path.write_text(json.dumps({"schema": "harmgate.trust/1", "keys": [
        {"public_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}]}))
    with pytest.raises(TrustError, match="holds a private key"):
        TrustStore.load(path)
    with pytest.raises(TrustError, match="cannot read the trust file"):
        TrustStore.load(tmp_path / "missing.json")


def test_no_serving_module_can_sign():
    """The serving code never imports the signing side (gates.signer, gates.keys), neither in its source nor at run
    time: a shell on a serving node finds no code path, and no key, that approves."""
    for path in (REPO_ROOT / "serve").glob("*.py"):
        text = path.read_text()
        assert "gates.signer" not in text and "gates.keys" not in text, path
    code = ("import sys, serve.wsgi, serve.runner, serve.bootstrap, serve.watcher, serve.app, serve.dashboard, "
            "serve.feedback; bad = [m for m in ('gates.signer', 'gates.keys') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _legacy_version(registry: Registry, name: str, version: str, model_dir: Path, hmac_key: str) -> None:
    """A version exactly as the HMAC scheme published it: files/, manifest.json, report.html, approval.json."""
    report = b"<html>old report</html>"
    manifest = {"schema": "harmgate.manifest/1", "name": name, "version": version, "created_at": utc_now(),
                "base_model": "tiny", "git_commit": "abc123", "files": file_entries(model_dir),
                "verdict": {"passed": True, "kpis": []}, "metrics": {}, "config": {"name": name},
                "provenance": {"sources": []},
                "attachments": {"report.html": {"sha256": __import__("hashlib").sha256(report).hexdigest(),
                                                "size": len(report)}}}
    for entry in manifest["files"]:
        registry.objects.upload_file(model_dir / entry["path"], f"models/{name}/{version}/files/{entry['path']}",
                                     sha256=entry["sha256"], size=entry["size"])
    registry.objects.put_bytes(f"models/{name}/{version}/report.html", report)
    registry.objects.put_bytes(f"models/{name}/{version}/manifest.json", json.dumps(manifest).encode())
    approval = {"schema": APPROVAL_SCHEMA, "name": name, "version": version, "manifest_sha256": digest(manifest),
                "approved_at": "2026-01-01T00:00:01Z", "signature_alg": SIGNATURE_ALG}
    approval["signature"] = legacy_signature(hmac_key.encode(), approval)
    registry.objects.put_bytes(f"models/{name}/{version}/approval.json", json.dumps(approval).encode())


def test_hmac_approved_version_is_refused_until_resigned(s3_store, s3_store_info, signing_key, tiny_model_dir,
                                                         tmp_path, caplog, monkeypatch):
    from align.tiny import save_tiny_model

    name, registry = "legacy-hmac", Registry(s3_store)
    hmac_key = "old-" + secrets.token_hex(20)
    publish(s3_store, tiny_model_dir, name, "v1")  # the model's revocation list exists from this publish
    _legacy_version(registry, name, "v2", save_tiny_model(tmp_path / "old", seed=5), hmac_key)
    row = registry.list_versions(name)[-1]
    assert row["version"] == "v2" and row["signature"] == "legacy-hmac" and not row["approved"]
    with pytest.raises(NotApproved, match="legacy approval check: approved under the retired HMAC scheme"):
        registry.fetch_verified(name, "v2", tmp_path / "c")

    cfg = service_config(tmp_path, name, s3_store)
    with caplog.at_level("INFO", logger="harmgate.serve"), live_service(cfg) as svc:
        assert svc.served == "v1", "no silent acceptance: the HMAC-approved newer version is not served"
        assert f"refusing {name}:v2 (legacy approval check)" in caplog.text
        assert f"harmgate registry resign {name} v2" in caplog.text

        env = {**os.environ, "HARMGATE_HMAC_KEY": "wrong-" + secrets.token_hex(20),
               s3_store.access_key_env: s3_store_info.access_key, s3_store.secret_key_env: s3_store_info.secret_key}
        args = [sys.executable, "-m", "harmgate", "registry", "resign", name, "v2", "--config", str(cfg)]
        done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "does not verify with $HARMGATE_HMAC_KEY" in done.stdout, done.stdout
        done = subprocess.run(args, cwd=REPO_ROOT, env={**env, "HARMGATE_HMAC_KEY": hmac_key}, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and f"re-signed {name} v2" in done.stdout, done.stdout + done.stderr

        shown = registry.show(name, "v2")
        assert shown["signature_status"] == "valid"
        assert shown["manifest"]["migrated_from"]["scheme"] == "HMAC-SHA256"
        assert shown["manifest"]["git_commit"] == "abc123", "provenance carried over"
        assert registry.fetch_attachment(name, "v2", "report.html") == b"<html>old report</html>"
        svc.handle.watcher.poll_once()
        assert svc.served == "v2" and svc.post("/v1/chat/completions", CHAT).json()["model"] == f"{name}:v2"
    record = registry.resign(name, "v2")  # already signed with the current key: nothing changes
    assert record["key_id"] == registry.show(name, "v2")["key_id"]


def test_rotation_then_resign_keeps_versions_verifying_after_the_grace_date(s3_store, tiny_model_dir, tmp_path,
                                                                           monkeypatch):
    keys, name = tmp_path / "keys", "rotated"
    generate(keys)
    monkeypatch.setenv(s3_store.trust_file_env, str(keys / "trust.json"))
    monkeypatch.setenv(s3_store.signing_key_env, (keys / "signing.key").read_text())
    publish_as = lambda version: Registry(s3_store).publish(  # noqa: E731
        name, tiny_model_dir, verdict={"passed": True}, metrics={}, config={}, provenance={}, base_model="x",
        version=version)
    old_id = publish_as("v1")["key_id"]
    publish_as("v2")
    Registry(s3_store).revoke(name, "v2", "bad")
    rotate(keys, grace_days=1)
    monkeypatch.setenv(s3_store.signing_key_env, (keys / "signing.key").read_text())
    registry = Registry(s3_store)
    assert registry.show(name, "v1")["signature_status"] == "valid", "within the grace period"
    record = registry.resign(name, "v1")
    assert record["key_id"] != old_id
    assert registry.show(name, "v1")["statement"]["resigned_from_key"] == old_id
    with pytest.raises(Exception, match="is revoked; not re-signed"):
        registry.resign(name, "v2")

    # The grace date passes: what the old key signed (nothing, now) is refused; v1 and the list still verify.
    trust = json.loads((keys / "trust.json").read_text())
    for entry in trust["keys"]:
        if entry["key_id"] == old_id:
            entry["valid_until"] = "2000-01-01T00:00:00Z"
    (keys / "trust.json").write_text(json.dumps(trust))
    rows = {r["version"]: r for r in Registry(s3_store).list_versions(name, tmp_path / "cache")}
    assert rows["v1"]["signature"] == "valid" and rows["v1"]["revocation_problem"] is None
    assert rows["v2"]["revoked"] and rows["v2"]["check"] == "retired key"


def test_a_run_that_publishes_checks_its_key_before_training(s3_store, monkeypatch):
    from harmgate.config import parse_config
    from harmgate.pipeline import PreflightError, preflight

    config = parse_config({"name": "pre", "model": {"base": "b/m"},
                           "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
                           "evals": {"suites": [{"name": "advbench_refusal"}]},
                           "policy": {"kpis": [{"name": "harm", "metric": "advbench_refusal.compliance_rate",
                                                "direction": "lower", "max": 0.1}]},
                           "store": s3_store.model_dump()})
    monkeypatch.delenv(s3_store.signing_key_env, raising=False)
    preflight(config)  # a run without the publish stage needs no key
    with pytest.raises(PreflightError, match="publish: no signing key"):
        preflight(config, publish=True)
    from gates.signer import generate_private_key, private_pem

    # A key the trust file does not list: everything it signed would be refused everywhere.
    monkeypatch.setenv(s3_store.signing_key_env, private_pem(generate_private_key()).decode())
    with pytest.raises(PreflightError, match="is not in the trust file"):
        preflight(config, publish=True)
