"""The signed registry against a real SeaweedFS: publish, verify, refuse, revoke, and tampering of every kind."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path

import pytest

from gates.manifest import SigningKeyMissing, digest, sign_approval
from gates.publish import publish_run
from gates.registry import (IntegrityError, NotApproved, Registry, RegistryError, Revoked, StoreUnavailable,
                            VersionNotFound)
from harmgate.config import StoreConfig, parse_config
from harmgate.rundir import create_run_dir, read_json, write_json
from tests.store_fixtures import free_port

PASSED = {"passed": True, "kpis": [{"name": "harm", "passed": True, "value": 0.01}]}


def _name() -> str:
    return f"m-{secrets.token_hex(4)}"  # every test its own model name: the bucket is shared by the session


def _model(tmp_path: Path, tag: str = "a") -> Path:
    """A small model-shaped folder (nested file included); the byte content is what gets verified."""
    d = tmp_path / f"model-{tag}"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "tag": tag}))
    (d / "model.safetensors").write_bytes(secrets.token_bytes(4096))
    (d / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    return d


def _publish(registry: Registry, model_dir: Path, name: str, version: str, **extra) -> dict:
    return registry.publish(name, model_dir, verdict=extra.pop("verdict", PASSED), metrics={"suite": {"m": 0.5}},
                            config={"name": name}, provenance={"sources": [{"id": "x", "licence": "MIT"}]},
                            base_model="base/model", version=version, **extra)


def _flip_byte(registry: Registry, key: str) -> None:
    client, bucket = registry.objects.client, registry.objects.bucket
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def test_publish_fetch_round_trip(s3_store, signing_key, tiny_model_dir, tmp_path):
    registry, name = Registry(s3_store), _name()
    record = _publish(registry, tiny_model_dir, name, "v1")
    assert record["bucket"] == s3_store.bucket and record["endpoint"] == s3_store.endpoint_url
    assert record["approval_key"] == f"models/{name}/v1/approval.json"

    # Objects carry their sha256; the manifest holds everything the brief requires.
    shown = registry.show(name, "v1")
    assert shown["approval_status"] == "valid" and shown["revoked"] is None
    manifest = shown["manifest"]
    assert manifest["base_model"] == "base/model" and manifest["verdict"] == PASSED
    assert manifest["provenance"]["sources"][0]["licence"] == "MIT" and "git_commit" in manifest
    assert manifest["created_at"] and shown["manifest_sha256"] == record["manifest_sha256"]
    weights = next(e for e in manifest["files"] if e["path"] == "model.safetensors")
    head = registry.objects.client.head_object(Bucket=s3_store.bucket, Key=f"models/{name}/v1/files/model.safetensors")
    assert head["Metadata"]["sha256"] == weights["sha256"] and head["ContentLength"] == weights["size"]

    model = registry.fetch_verified(name, "v1", tmp_path / "cache")
    assert model.local_dir == tmp_path / "cache" / name / "v1" and model.manifest_sha256 == record["manifest_sha256"]
    for entry in manifest["files"]:
        assert (model.local_dir / entry["path"]).read_bytes() == (tiny_model_dir / entry["path"]).read_bytes()
    assert not list((tmp_path / "cache" / name).glob(".*partial*")), "the temp download folder must be gone"

    # A second fetch reuses the cache (same inode, no download) after re-verifying it.
    inode = (model.local_dir / "model.safetensors").stat().st_ino
    again = registry.fetch_verified(name, "v1", tmp_path / "cache")
    assert (again.local_dir / "model.safetensors").stat().st_ino == inode

    assert [v["version"] for v in registry.list_versions(name)] == ["v1"]
    assert registry.latest_approved(name) == "v1"
    with pytest.raises(RegistryError, match="immutable"):
        _publish(registry, tiny_model_dir, name, "v1")


def test_default_version_is_utc_timestamp(s3_store, signing_key, tmp_path):
    record = _publish(Registry(s3_store), _model(tmp_path), _name(), None)
    assert record["version"].startswith("v20") and record["version"].endswith("Z") and "T" in record["version"]


def test_failed_verdict_is_refused_and_nothing_is_written(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    with pytest.raises(NotApproved, match="did not pass"):
        _publish(registry, _model(tmp_path), name, "v1", verdict={"passed": False, "kpis": []})
    with pytest.raises(NotApproved):
        _publish(registry, _model(tmp_path, "b"), name, "v1", verdict={"kpis": []})  # no "passed": not a pass
    assert registry.objects.list_keys(f"models/{name}/") == []


def test_publish_without_signing_key_fails_before_upload(s3_store, tmp_path, monkeypatch):
    monkeypatch.delenv(s3_store.signing_key_env, raising=False)
    registry, name = Registry(s3_store), _name()
    with pytest.raises(SigningKeyMissing, match=s3_store.signing_key_env):
        _publish(registry, _model(tmp_path), name, "v1")
    assert registry.objects.list_keys(f"models/{name}/") == []


def test_tampered_object_in_s3_is_detected(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path), name, "v1")
    _flip_byte(registry, f"models/{name}/v1/files/model.safetensors")
    with pytest.raises(IntegrityError, match=r"model\.safetensors sha256 mismatch"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")
    assert not (tmp_path / "cache" / name / "v1").exists(), "a failed download must not leave a cache entry"
    registry.objects.client.delete_object(Bucket=s3_store.bucket, Key=f"models/{name}/v1/files/sub/tokenizer.json")
    with pytest.raises(IntegrityError, match=r"sub/tokenizer\.json is in the manifest but missing"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")
    assert not list((tmp_path / "cache" / name).iterdir()), "no partial download left behind"


def test_tampered_local_cache_is_detected(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path), name, "v1")
    local = registry.fetch_verified(name, "v1", tmp_path / "cache").local_dir

    weights = local / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(IntegrityError, match=r"cached copy .*model\.safetensors sha256 mismatch.*delete"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")

    weights.write_bytes(original)
    (local / "extra.py").write_text("import os")
    with pytest.raises(IntegrityError, match="unexpected file"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")

    (local / "extra.py").unlink()
    (local / "sub" / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="missing file"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")


def test_forged_approval_is_rejected(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path, "good"), name, "v1")
    # An attacker with bucket write access but without the key publishes v2 with a self-made approval.
    _publish(registry, _model(tmp_path, "evil"), name, "v2")
    manifest = registry.show(name, "v2")["manifest"]
    forged = sign_approval(b"attacker-guess-of-the-key", name=name, version="v2", manifest_sha256=digest(manifest))
    registry.objects.client.put_object(Bucket=s3_store.bucket, Key=f"models/{name}/v2/approval.json",
                                       Body=json.dumps(forged).encode())
    with pytest.raises(NotApproved, match="signature is invalid"):
        registry.fetch_verified(name, "v2", tmp_path / "cache")
    assert registry.show(name, "v2")["approval_status"] == "invalid"
    assert registry.latest_approved(name) == "v1", "a forged newer version must not be chosen"

    # Copying v1's genuine approval onto v2 fails too: the signature covers name, version and manifest.
    genuine = registry.objects.get_bytes(f"models/{name}/v1/approval.json")
    registry.objects.client.put_object(Bucket=s3_store.bucket, Key=f"models/{name}/v2/approval.json", Body=genuine)
    with pytest.raises(NotApproved):
        registry.fetch_verified(name, "v2", tmp_path / "cache")


def test_manifest_edited_after_approval_is_an_integrity_error(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path), name, "v1")
    # Swap the weights and "fix up" the manifest to match them: the approval still pins the old digest.
    _flip_byte(registry, f"models/{name}/v1/files/model.safetensors")
    manifest = registry.show(name, "v1")["manifest"]
    manifest["verdict"] = {"passed": True, "kpis": []}
    registry.objects.client.put_object(Bucket=s3_store.bucket, Key=f"models/{name}/v1/manifest.json",
                                       Body=json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="does not match the approved digest"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")


def test_fetch_without_signing_key_is_refused(s3_store, signing_key, tmp_path, monkeypatch):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path), name, "v1")
    monkeypatch.delenv(s3_store.signing_key_env)
    with pytest.raises(SigningKeyMissing):
        registry.fetch_verified(name, "v1", tmp_path / "cache")
    monkeypatch.setenv(s3_store.signing_key_env, "another-key-of-32-bytes-or-so-xx")
    with pytest.raises(NotApproved):
        registry.fetch_verified(name, "v1", tmp_path / "cache")


def test_revoked_version_is_refused(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path, "1"), name, "v1")
    _publish(registry, _model(tmp_path, "2"), name, "v2")
    assert registry.latest_approved(name) == "v2"
    record = registry.revoke(name, "v2", "jailbreak found in red-teaming")
    assert registry.revoke(name, "v2", "again")["revoked_at"] == record["revoked_at"]  # idempotent
    with pytest.raises(Revoked, match="jailbreak found"):
        registry.fetch_verified(name, "v2", tmp_path / "cache")
    assert registry.latest_approved(name) == "v1"
    rows = {r["version"]: r for r in registry.list_versions(name)}
    assert rows["v2"]["revoked"] and rows["v2"]["revoked_reason"] == "jailbreak found in red-teaming"
    assert not rows["v1"]["revoked"] and rows["v1"]["approved"]
    with pytest.raises(VersionNotFound):
        registry.revoke(name, "v9", "no such version")


def test_nothing_approved(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    assert registry.latest_approved(name) is None and registry.list_versions(name) == []
    with pytest.raises(VersionNotFound):
        registry.fetch_verified(name, "v1", tmp_path / "cache")
    # An interrupted publish (files and manifest, no approval) is listed but never served.
    _publish(registry, _model(tmp_path), name, "v1")
    registry.objects.client.delete_object(Bucket=s3_store.bucket, Key=f"models/{name}/v1/approval.json")
    assert registry.latest_approved(name) is None
    assert registry.list_versions(name)[0]["signature"] == "missing"
    with pytest.raises(NotApproved, match="no approval record"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")


def test_store_down_is_store_unavailable_quickly(tmp_path, monkeypatch):
    store = StoreConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", local_state_dir=str(tmp_path))
    monkeypatch.setenv(store.access_key_env, "AK")
    monkeypatch.setenv(store.secret_key_env, "SK")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=store.endpoint_url):
        Registry(store).latest_approved("anything")
    with pytest.raises(StoreUnavailable):
        Registry(store).fetch_verified("anything", "v1", tmp_path / "cache")
    assert time.monotonic() - started < 10


def test_invalid_names_are_rejected(s3_store, signing_key, tmp_path):
    registry = Registry(s3_store)
    with pytest.raises(RegistryError, match="invalid model name"):
        _publish(registry, _model(tmp_path), "../escape", "v1")
    with pytest.raises(RegistryError, match="invalid version"):
        registry.fetch_verified("ok", "../../etc", tmp_path / "cache")


# -- publish_run ---------------------------------------------------------------------------------------
def _run_config(name: str, store: StoreConfig) -> dict:
    return {"name": name, "model": {"base": "base/model"},
            "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
            "evals": {"suites": [{"name": "advbench_refusal"}]},
            "policy": {"kpis": [{"name": "harm", "metric": "advbench_refusal.compliance_rate",
                                 "direction": "lower", "max": 0.1}]},
            "store": store.model_dump()}


def test_publish_run(s3_store, signing_key, tmp_path):
    name = _name()
    run = create_run_dir(parse_config(_run_config(name, s3_store)), tmp_path / "run")
    shutil.copytree(_model(tmp_path), run.merged_model_dir)
    write_json(run.eval_summary, {"tuned": {"advbench_refusal": {"compliance_rate": 0.02}}})
    write_json(run.data_manifest, {"sources": [{"id": "tatsu-lab/alpaca", "licence": "CC-BY-NC-4.0"}]})

    write_json(run.verdict, {"passed": False, "kpis": [
        {"name": "harm", "passed": False, "value": 0.4, "message": "0.4 > max 0.1"},
        {"name": "helpfulness", "passed": True}]})
    with pytest.raises(NotApproved, match=r"failing KPIs: harm \(0\.4 > max 0\.1\)") as err:
        publish_run(run)
    assert "helpfulness" not in str(err.value) and not run.publish_record.exists()

    write_json(run.verdict, {"passed": True, "kpis": [{"name": "harm", "passed": True}]})
    record = publish_run(run, version="v1")
    assert read_json(run.publish_record) == record and record["name"] == name
    manifest = Registry(s3_store).show(name, "v1")["manifest"]
    assert manifest["provenance"]["sources"][0]["licence"] == "CC-BY-NC-4.0"
    assert manifest["metrics"]["tuned"]["advbench_refusal"]["compliance_rate"] == 0.02
    assert manifest["config"]["name"] == name and manifest["base_model"] == "base/model"
