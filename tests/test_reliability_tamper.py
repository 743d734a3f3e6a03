"""Tampering, against a running service (real HTTP, real SeaweedFS, the registry watcher polled by the test).

The attacker has write access to the bucket (and, in one case, a shell on a serving node, or a retired key);
never the current private key. A flipped byte in a weight file in S3 and in the local cache, a swapped manifest,
a forged statement, a signature by an unknown key, a truncated signature file, a retired key past its grace
date, a replayed old revocation list, a deleted revocation list: each is refused with one clear log line that
names the check, and what is served is always a verified, approved, unrevoked version or nothing (503)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gates.keys import SIGNING_KEY_FILE, TRUST_FILE, generate, rotate
from gates.registry import Registry
from gates.trust import TrustStore
from tests.reliability_support import CHAT, live_service, service_config
from tests.test_serve import REPO_ROOT, publish, server_env

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


def _refuse_pinned(tmp_path, name, s3_store, version, caplog, monkeypatch) -> str:
    """Start a service pinned to ``version``: it must refuse (exit 2); returns the 'refusing to start' line."""
    from serve.runner import serve_main
    from tests.store_fixtures import free_port

    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="harmgate.serve"):
        assert serve_main(str(service_config(tmp_path, name, s3_store, version=version)), port=free_port()) == 2
    [line] = _log_lines(caplog, "refusing to start")
    return line


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
        assert f"not switching to {name}:v2: {name}:v2 refused by the file digest check" in line
        assert "model.safetensors sha256 mismatch" in line
        assert svc.served == "v1" and svc.post("/v1/chat/completions", CHAT).json()["model"] == f"{name}:v1"
        assert not (tmp_path / "cache" / name / "v2").exists(), "a failed download leaves no cache entry"


def test_bucket_changed_under_a_warm_cache_is_a_warning_on_start_and_each_tick(s3_store, models, tmp_path, caplog):
    name, registry = "tamper-drift", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    cfg = service_config(tmp_path, name, s3_store)
    with live_service(cfg) as svc:  # downloads, verifies and caches v1
        assert svc.served == "v1"
        _flip(registry, f"models/{name}/v1/files/model.safetensors")
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
            svc.handle.watcher.poll_once()
        lines = _log_lines(caplog, f"bucket no longer matches the verified cached copy of {name}:v1")
        assert len(lines) == 2, "a warning on every watch tick"
        assert "files/model.safetensors changed" in lines[0] and "still serving the cached copy" in lines[0]
        assert svc.served == "v1"
    caplog.clear()
    with caplog.at_level("INFO", logger="harmgate.serve"), live_service(cfg) as svc:
        assert svc.served == "v1", "the cached copy still matches the signed statement: it is served"
        assert _log_lines(caplog, f"bucket no longer matches the verified cached copy of {name}:v1")


def test_flipped_byte_in_the_local_cache_refuses_the_start(s3_store, models, tmp_path, caplog, monkeypatch):
    name = "tamper-cache"
    publish(s3_store, models[0], name, "v1")
    with live_service(service_config(tmp_path, name, s3_store)) as svc:  # downloads, verifies and marks the copy
        assert svc.served == "v1"
    weights = tmp_path / "cache" / name / "v1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x80
    weights.write_bytes(bytes(data))
    line = _refuse_pinned(tmp_path, name, s3_store, None, caplog, monkeypatch)
    assert f"{name}:v1 refused by the file digest check: cached copy {weights.parent}" in line
    assert "model.safetensors sha256 mismatch" in line and "delete" in line, "the line says how to recover"


def test_swapped_manifest_withdraws_and_rolls_back(s3_store, models, tmp_path, caplog):
    name, registry = "tamper-manifest", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    publish(s3_store, models[1], name, "v2")
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        assert svc.served == "v2"
        # The attacker points v2's manifest at other weights (v1's files): the statement pins the manifest digest.
        manifest = registry.show(name, "v2")["manifest"]
        manifest["files"] = registry.show(name, "v1")["manifest"]["files"]
        _put(registry, f"models/{name}/v2/files/harmgate/manifest.json", json.dumps(manifest).encode())
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        [stopped] = _log_lines(caplog, f"stopped serving: {name}:v2 is no longer approved")
        assert "manifest digest check: harmgate/manifest.json was changed after signing" in stopped
        assert _log_lines(caplog, f"refusing {name}:v2 (manifest digest check)")
        assert svc.served == "v1", "rolled back to the newest version that still verifies"
        assert svc.post("/v1/chat/completions", CHAT).json()["model"] == f"{name}:v1"


def _forge_statement(registry: Registry, name: str, version: str, evil: Path) -> None:
    """Swap the weights for ``evil``'s and edit the signed statement to match, keeping the genuine signature."""
    import hashlib

    key = f"models/{name}/{version}/model.sig"
    bundle = json.loads(registry.objects.get_bytes(key))
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    weights = (evil / "model.safetensors").read_bytes()
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.safetensors":
            resource["digest"] = hashlib.sha256(weights).hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    _put(registry, f"models/{name}/{version}/files/model.safetensors", weights)
    _put(registry, key, json.dumps(bundle).encode())


def test_forged_statement_is_ignored_and_refused_when_pinned(s3_store, models, tmp_path, caplog, monkeypatch):
    name, registry = "tamper-forged", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    publish(s3_store, models[1], name, "v2")
    _forge_statement(registry, name, "v2", models[2])
    with caplog.at_level("INFO", logger="harmgate.serve"), live_service(service_config(tmp_path, name, s3_store)) as svc:
        assert svc.served == "v1", "the forged newest version is skipped at start"
        svc.handle.watcher.poll_once()
        svc.handle.watcher.poll_once()
        lines = _log_lines(caplog, f"refusing {name}:v2 (signature check): the signature does not verify")
        assert len(lines) == 2, "once at start, once by the watcher (not again on later ticks)"
        assert svc.served == "v1"
    line = _refuse_pinned(tmp_path, name, s3_store, "v2", caplog, monkeypatch)
    assert f"{name}:v2 refused by the signature check: the signature does not verify" in line


def test_truncated_signature_file(s3_store, models, tmp_path, caplog, monkeypatch):
    name, registry = "tamper-truncated", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        publish(s3_store, models[1], name, "v2")
        genuine = registry.objects.get_bytes(f"models/{name}/v2/model.sig")
        _put(registry, f"models/{name}/v2/model.sig", genuine[:-40])
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert _log_lines(caplog, f"refusing {name}:v2 (signature check): the signature file is malformed or "
                                  f"truncated")
        assert svc.served == "v1" and svc.post("/v1/chat/completions", CHAT).status_code == 200
    assert "malformed or truncated" in _refuse_pinned(tmp_path, name, s3_store, "v2", caplog, monkeypatch)


def test_a_serving_node_cannot_approve(s3_store, s3_store_info, models, tmp_path, caplog, monkeypatch):
    """A node holds the trust file only: `harmgate publish` there has no key to sign with; if its intruder makes
    a key pair of their own and signs, every other node refuses the version (unknown key)."""
    from tests.reliability_support import passed_run

    name, registry = "tamper-node", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    cfg = service_config(tmp_path, name, s3_store)
    run = passed_run(tmp_path, cfg, models[1])
    env = {**server_env(), s3_store.access_key_env: s3_store_info.access_key,
           s3_store.secret_key_env: s3_store_info.secret_key}
    done = subprocess.run([sys.executable, "-m", "harmgate", "publish", str(run.root)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no signing key" in done.stdout, done.stdout + done.stderr
    assert registry.list_versions(name)[-1]["version"] == "v1", "nothing was uploaded"

    # The intruder's own key pair, trusted by nobody but themselves.
    intruder = tmp_path / "intruder-keys"
    generate(intruder)
    monkeypatch.setenv(s3_store.signing_key_env, (intruder / SIGNING_KEY_FILE).read_text())
    Registry(s3_store, trust=TrustStore.load(intruder / TRUST_FILE)).publish(
        name, models[1], verdict={"passed": True}, metrics={}, config={}, provenance={}, base_model="x", version="v2")
    with caplog.at_level("INFO", logger="harmgate.serve"), live_service(cfg) as svc:
        assert svc.served == "v1"
        [line] = _log_lines(caplog, f"refusing {name}:v2 (unknown key check)")
        assert "which is not in the trust file" in line
    assert "unknown key check" in _refuse_pinned(tmp_path, name, s3_store, "v2", caplog, monkeypatch)


def test_retired_key_stops_verifying_after_its_grace_date(s3_store, models, tmp_path, caplog, monkeypatch):
    """Rotation: v1 signed by the new key; the old key (kept by someone after the rotation, grace over) signs
    v2: refused by the retired key check while v1 keeps serving. Within the grace period it still verifies."""
    name = "tamper-retired"
    keys = tmp_path / "keys"
    generate(keys, label="old")
    old_pem = (keys / SIGNING_KEY_FILE).read_text()
    old_trust = TrustStore.load(keys / TRUST_FILE)  # the old key still active, as the attacker would like it
    rotate(keys, grace_days=0, label="new")  # grace over at once
    monkeypatch.setenv(s3_store.trust_file_env, str(keys / TRUST_FILE))
    monkeypatch.setenv(s3_store.signing_key_env, (keys / SIGNING_KEY_FILE).read_text())
    new_registry = Registry(s3_store)
    for version, model in (("v1", models[0]),):
        new_registry.publish(name, model, verdict={"passed": True}, metrics={}, config={}, provenance={},
                             base_model="x", version=version)
    monkeypatch.setenv(s3_store.signing_key_env, old_pem)
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        assert svc.served == "v1"
        Registry(s3_store, trust=old_trust).publish(name, models[1], verdict={"passed": True}, metrics={},
                                                    config={}, provenance={}, base_model="x", version="v2")
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        [line] = _log_lines(caplog, f"refusing {name}:v2 (retired key check)")
        assert "was retired; its grace period ended" in line and "harmgate registry resign" in line
        assert svc.served == "v1" and svc.post("/v1/chat/completions", CHAT).json()["model"] == f"{name}:v1"

        # Within a grace period the same signature verifies: the operator extends the grace date (the service
        # re-reads its trust file when it changes) and the watcher switches to v2.
        rotated = json.loads((keys / TRUST_FILE).read_text())
        for entry in rotated["keys"]:
            if entry["label"] == "old":
                entry["valid_until"] = "2999-01-01T00:00:00Z"
        (keys / TRUST_FILE).write_text(json.dumps(rotated))
        svc.handle.watcher.poll_once()
        assert svc.served == "v2"


def test_revocation_list_replay_and_deletion(s3_store, models, tmp_path, caplog, monkeypatch):
    name, registry = "tamper-revocations", Registry(s3_store)
    for i, version in enumerate(("v1", "v2", "v3")):
        publish(s3_store, models[i], name, version)
    list_key = f"models/{name}/revocations.json"
    first_list = registry.objects.get_bytes(list_key)  # sequence 1, nothing revoked, validly signed
    with live_service(service_config(tmp_path, name, s3_store)) as svc:
        assert svc.served == "v3"
        registry.revoke(name, "v2", "jailbreak")
        registry.revoke(name, "v3", "leaks training data")
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert _log_lines(caplog, f"stopped serving: {name}:v3 was revoked: leaks training data")
        assert svc.served == "v1", "back to the newest unrevoked version, skipping revoked v2"

        # A bucket writer puts the old (genuinely signed) list back, to un-revoke v3: refused, v1 stays.
        _put(registry, list_key, first_list)
        assert registry.latest_approved(name) == "v3", "a reader without memory would be fooled"
        caplog.clear()
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
            svc.handle.watcher.poll_once()
        [line] = _log_lines(caplog, "replayed old revocation list refused")
        assert "has sequence 1, this node already accepted sequence 3" in line
        assert svc.served == "v1"

        # A forged list (the attacker's own key) is refused the same way.
        forged = json.loads(first_list)
        forged["signatures"][0]["sig"] = base64.b64encode(b"\x30" * 70).decode()
        _put(registry, list_key, json.dumps(forged).encode())
        caplog.clear()
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert _log_lines(caplog, "has an invalid signature (forged or altered)") and svc.served == "v1"

        # Deleted: this node keeps the list it accepted (revocations stick) and says so.
        registry.objects.delete(list_key)
        caplog.clear()
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert _log_lines(caplog, "no signed revocation list at") and svc.served == "v1"
        assert _log_lines(caplog, "using the list this node last accepted (sequence 3)")

    # A fresh node (empty cache) cannot tell a deleted list from no revocations: it refuses to start.
    (tmp_path / "fresh").mkdir()
    fresh = service_config(tmp_path / "fresh", name, s3_store, cache_dir=str(tmp_path / "fresh-cache"))
    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    from serve.bootstrap import StartupError, build_service
    from harmgate.config import load_config

    with pytest.raises(StartupError, match=r"revocation check: no signed revocation list .*\(fail closed\)"):
        build_service(load_config(fresh), bind_host="127.0.0.1")
    # The publisher re-issues the list above every sequence it issued (each revocation again): accepted again.
    assert registry.revoke(name, "v2", "jailbreak", sequence=10)["sequence"] == 11
    assert registry.revoke(name, "v3", "leaks training data")["sequence"] == 12
    with live_service(fresh) as svc:
        assert svc.served == "v1"


def test_downloaded_version_verifies_with_the_model_signing_cli(s3_store, models, tmp_path):
    """A user with the bucket's files and the public key, and no harmgate: `model_signing verify key`."""
    from gates.keys import export_public
    from tests.store_fixtures import TRUST_FILE_PATH

    name, registry = "cli-verify", Registry(s3_store)
    publish(s3_store, models[0], name, "v1")
    folder = tmp_path / "download" / "files"
    for key in registry.objects.list_keys(f"models/{name}/v1/files/"):
        target = folder / key.split("/files/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        registry.objects.download_file(key, target)
    signature = tmp_path / "download" / "model.sig"
    registry.objects.download_file(f"models/{name}/v1/model.sig", signature)
    public = tmp_path / "key.pub"
    trust = TrustStore.load(Path(TRUST_FILE_PATH))
    public.write_bytes(export_public(trust, next(iter(trust.keys))[:16]))
    cli = shutil.which("model_signing", path=str(Path(sys.executable).parent))
    assert cli, "the model_signing console script is installed with harmgate"

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run([cli, "verify", "key", str(folder), "--signature", str(signature),
                               "--public_key", str(public)], capture_output=True, text=True, timeout=120)

    done = verify()
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stdout + done.stderr
    assert {"harmgate/manifest.json", "harmgate/verdict.json", "harmgate/data_manifest.json"} <= {
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    verdict = folder / "harmgate" / "verdict.json"
    verdict.write_text(verdict.read_text().replace("true", "false"))  # the user's copy was altered
    done = verify()
    assert done.returncode != 0 and "harmgate/verdict.json" in done.stdout + done.stderr
