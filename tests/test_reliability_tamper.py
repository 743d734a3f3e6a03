"""Tampering, against a running service (real HTTP, real SeaweedFS, the registry watcher polled by the test): a
flipped byte in a weight file in S3 and in the local cache, a swapped manifest, an approval forged without the
signing key, a rollback to a revoked version (also after its revocation record was deleted). Each is refused
with one clear log line, and what is served is always a verified, approved, unrevoked version or nothing (503)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gates.manifest import digest, sign_approval
from gates.registry import Registry
from tests.reliability_support import CHAT, live_service, service_config
from tests.test_serve import publish

pytestmark = pytest.mark.usefixtures("signing_key")


def _put(registry: Registry, key: str, data: bytes) -> None:
    """A bucket writer without the signing key (write access to the bucket is all it has)."""
    registry.objects.client.put_object(Bucket=registry.objects.bucket, Key=key, Body=data)


def _flip(registry: Registry, key: str) -> None:
    data = bytearray(registry.objects.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    _put(registry, key, bytes(data))


@pytest.fixture
def models(tmp_path_factory) -> list[Path]:
    from align.tiny import save_tiny_model

    base = tmp_path_factory.mktemp("tamper-models")
    return [save_tiny_model(base / f"m{seed}", seed=seed) for seed in range(3)]


def _log_lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_flipped_byte_in_s3_is_never_served(s3_store, models, tmp_path, caplog):
    name, registry = "tamper-s3", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        publish(s3_store, models[1], name, "v2")
        _flip(registry, f"models/{name}/v2/files/model.safetensors")
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
            svc.handle.watcher.poll_once()  # not retried while the listing is unchanged
        [line] = _log_lines(caplog, "not switching to")
        assert f"not switching to {name}:v2" in line and "model.safetensors sha256 mismatch" in line
        assert svc.served == "v1" and svc.post("/v1/chat/completions", CHAT).json()["model"] == f"{name}:v1"
        assert not (tmp_path / "cache" / name / "v2").exists(), "a failed download leaves no cache entry"


def test_flipped_byte_in_the_local_cache_refuses_the_start(s3_store, models, tmp_path, caplog, monkeypatch):
    from serve.runner import serve_main
    from tests.store_fixtures import free_port

    name = "tamper-cache"
    publish(s3_store, models[0], name, "v1")
    cfg = service_config(tmp_path, name, s3_store)
    with live_service(cfg) as svc:  # downloads, verifies and marks the cached copy
        assert svc.served == "v1"
    weights = tmp_path / "cache" / name / "v1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x80
    weights.write_bytes(bytes(data))
    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="harmgate.serve"):
        assert serve_main(str(cfg), port=free_port()) == 2
    [line] = _log_lines(caplog, "refusing to start")
    assert f"cached copy {weights.parent}" in line and "model.safetensors sha256 mismatch" in line
    assert "delete" in line, "the line says how to recover"


def test_swapped_manifest_withdraws_and_rolls_back(s3_store, models, tmp_path, caplog):
    name, registry = "tamper-manifest", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    publish(s3_store, models[1], name, "v2")
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        assert svc.served == "v2"
        # The attacker points v2's manifest at other weights (v1's files): the approval pins the old digest.
        manifest = registry.show(name, "v2")["manifest"]
        manifest["files"] = registry.show(name, "v1")["manifest"]["files"]
        _put(registry, f"models/{name}/v2/manifest.json", json.dumps(manifest).encode())
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert _log_lines(caplog, f"stopped serving: {name}:v2 is no longer approved (signature invalid)")
        assert _log_lines(caplog, f"ignoring {name}:v2: its approval is invalid")
        assert svc.served == "v1", "rolled back to the newest version that still verifies"
        assert svc.post("/v1/chat/completions", CHAT).json()["model"] == f"{name}:v1"


def test_forged_approval_is_ignored_and_refused_when_pinned(s3_store, models, tmp_path, caplog, monkeypatch):
    from serve.runner import serve_main
    from tests.store_fixtures import free_port

    name, registry = "tamper-forged", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        # v2: the attacker's files and manifest, and an approval signed with a key they guessed.
        publish(s3_store, models[1], name, "v2")
        manifest = registry.show(name, "v2")["manifest"]
        forged = sign_approval(b"not-the-real-signing-key", name=name, version="v2", manifest_sha256=digest(manifest))
        registry.objects.client.delete_object(Bucket=s3_store.bucket, Key=f"models/{name}/v2/approval.json")
        _put(registry, f"models/{name}/v2/approval.json", json.dumps(forged).encode())
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
            svc.handle.watcher.poll_once()
        assert len(_log_lines(caplog, f"ignoring {name}:v2: its approval is invalid")) == 1, "logged once"
        assert svc.served == "v1"

    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="harmgate.serve"):
        assert serve_main(str(service_config(tmp_path, name, s3_store, version="v2")), port=free_port()) == 2
    [line] = _log_lines(caplog, "refusing to start")
    assert f"{name}:v2: approval signature is invalid (forged, altered, or signed with another key)" in line


def test_no_rollback_to_a_revoked_version(s3_store, models, tmp_path, caplog, monkeypatch):
    from serve.runner import serve_main
    from tests.store_fixtures import free_port

    name, registry = "tamper-rollback", Registry(s3_store)
    for i, version in enumerate(("v1", "v2", "v3")):
        publish(s3_store, models[i], name, version)
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        assert svc.served == "v3"
        registry.revoke(name, "v2", "jailbreak")
        registry.revoke(name, "v3", "leaks training data")
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert _log_lines(caplog, f"stopped serving: {name}:v3 was revoked: leaks training data")
        assert svc.served == "v1", "back to the newest unrevoked version, skipping revoked v2"

        registry.revoke(name, "v1", "same flaw")
        svc.handle.watcher.poll_once()
        assert svc.served is None
        resp = svc.post("/v1/chat/completions", CHAT)
        assert resp.status_code == 503 and "was revoked: same flaw" in resp.json()["error"]["message"]
        assert svc.get("/readyz").status_code == 503

        # A bucket writer deletes v3's revocation record: this process still refuses it, and says so.
        registry.objects.client.delete_object(Bucket=s3_store.bucket, Key=f"models/{name}/v3/revoked.json")
        assert registry.latest_approved(name) == "v3"
        caplog.clear()
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert svc.served is None and svc.get("/readyz").status_code == 503
        assert _log_lines(caplog, f"refusing {name}:v3: it was revoked (leaks training data) and its revocation "
                                  f"record has since disappeared")

    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="harmgate.serve"):
        assert serve_main(str(service_config(tmp_path, name, s3_store, version="v2")), port=free_port()) == 2
    [line] = _log_lines(caplog, "refusing to start")
    assert f"{name}:v2 was revoked" in line and line.endswith("jailbreak")
