"""The store dies (SIGKILL) during `publish`, at every phase, while a service is serving the previous version.

Each case: a service serves v1 of a model; `publish_run` of a new run starts, and a botocore event hook kills the
SeaweedFS process at one exact call (mid multipart upload, between two files, before the manifest, before the
signature, or just after the signature was stored but before its response arrived). Then:

* publish fails with a StoreUnavailable naming the endpoint; the service keeps answering with v1 and stays ready;
* the store comes back: the new version is not approved (unless the signature itself was stored, which happens only
  after every file verified), the service does not switch to it, `fetch_verified` refuses it;
* rerunning publish resumes the *same* version and approves it, with every file's sha256 equal to the local
  model's; a third run changes nothing; the service then switches to it.

The weights file is 12 MiB, uploaded in 5 MiB parts, so the multipart path is the one that breaks.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from botocore.exceptions import ConnectionClosedError

from gates.publish import publish_run
from gates.registry import NotApproved, Registry, StoreUnavailable, VersionNotFound
from harmgate.objectstore import sha256_file
from harmgate.rundir import read_json
from tests.reliability_support import CHAT, KillableStore, live_service, passed_run, service_config

PART = 5 * 2**20

pytestmark = pytest.mark.usefixtures("signing_key")


@pytest.fixture(scope="module")
def store(tmp_path_factory, s3_store_info):  # s3_store_info: the session fixture clears developer S3 keys
    killable = KillableStore(tmp_path_factory.mktemp("killable-seaweedfs"), f"reliability-{secrets.token_hex(3)}")
    yield killable
    if killable.running():
        killable.kill()  # a throwaway store: no need to wait for a graceful stop


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """A random Llama whose model.safetensors is ~12 MiB: three 5 MiB parts."""
    from align.tiny import build_tiny_model, build_tiny_tokenizer

    dest = tmp_path_factory.mktemp("big") / "model"
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=384, seed=3)
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    assert (dest / "model.safetensors").stat().st_size > 2 * PART
    return dest


def _arm(registry: Registry, store: KillableStore, phase: str) -> dict:
    """Register the hook that kills the store at ``phase``; returns its state (``fired`` once it did)."""
    events, state = registry.objects.client.meta.events, {"fired": False, "files_done": [], "signature": False}

    def kill() -> None:
        state["fired"] = True
        store.kill()

    def before(params, event_name, **_):
        if state["fired"]:
            return
        op, key = event_name.rsplit(".", 1)[1], params.get("Key", "")
        if phase == "mid_multipart_upload" and op == "UploadPart" and params.get("PartNumber") == 2:
            kill()
        elif phase == "between_files" and op in ("PutObject", "CreateMultipartUpload") and "/files/" in key:
            if any(k.endswith("model.safetensors") for k in state["files_done"]):
                kill()  # the weights are stored and verified; the next file never arrives
            state["files_done"].append(key)
        elif phase == "before_manifest" and op == "PutObject" and key.endswith("/manifest.json"):
            kill()
        elif phase == "before_signature" and op == "PutObject" and key.endswith("/model.sig"):
            kill()
        elif phase == "after_signature" and op == "PutObject" and key.endswith("/model.sig"):
            state["signature"] = True

    def after(event_name, **_):
        if phase == "after_signature" and state["signature"] and not state["fired"]:
            kill()  # the store wrote the signature; its answer is lost with it
            raise ConnectionClosedError(endpoint_url=store.info.endpoint)

    events.register("before-parameter-build.s3", before)
    events.register("after-call.s3.PutObject", after)
    return state


PHASES = ["mid_multipart_upload", "between_files", "before_manifest", "before_signature", "after_signature"]


@pytest.mark.parametrize("phase", PHASES)
def test_store_killed_during_publish(phase, store, big_model, tiny_model_dir, tmp_path, caplog):
    if not store.running():
        store.restart()
    name = f"pub-{phase.replace('_', '-')}"
    cfg = service_config(tmp_path, name, store.config(max_attempts=2), store_wait_s=0)
    Registry(store.config()).publish(name, tiny_model_dir, verdict={"passed": True}, metrics={}, config={},
                                     provenance={}, base_model="tiny", version="v1")
    run = passed_run(tmp_path, cfg, big_model)
    endpoint = store.info.endpoint

    with live_service(cfg) as svc:
        assert svc.served == "v1"
        registry = Registry(store.config(max_attempts=2), multipart_threshold=PART, multipart_chunksize=PART)
        state = _arm(registry, store, phase)
        with pytest.raises(StoreUnavailable, match=endpoint):
            publish_run(run, registry=registry)
        assert state["fired"] and not store.running()
        version = read_json(run.publish_pending)["version"]
        assert not run.publish_record.exists(), "publish.json is written only after the signature"

        # Store down: the service keeps serving v1 (verified when loaded), ready, and says so once in its log.
        with caplog.at_level("INFO", logger="harmgate.serve"):
            svc.handle.watcher.poll_once()
        assert svc.served == "v1" and svc.get("/readyz").status_code == 200
        reply = svc.post("/v1/chat/completions", CHAT)
        assert reply.status_code == 200 and reply.json()["model"] == f"{name}:v1"
        assert "registry check failed" in caplog.text and f"still serving {name}:v1" in caplog.text
        assert svc.get("/v1/models").json()["data"][0]["version"] == "v1" and svc.get("/metrics").ok
        assert svc.get("/dashboard").status_code == 404, "nothing verifiable to show: a 404 saying why, not a 5xx"

        store.restart()
        assert store.info.endpoint == endpoint
        reader = Registry(store.config())
        if phase == "after_signature":
            # Stored last, after every file verified: this version is complete and may be served.
            assert reader.latest_approved(name) == version
        else:
            assert reader.latest_approved(name) == "v1", f"a partial upload ({phase}) must never be approved"
            with pytest.raises((NotApproved, VersionNotFound)):
                reader.fetch_verified(name, version, tmp_path / "check-cache")
            with caplog.at_level("INFO", logger="harmgate.serve"):
                svc.handle.watcher.poll_once()
            assert svc.served == "v1"
            if phase == "before_signature":  # the manifest is there, the signature is not
                assert f"ignoring {name}:{version} until it is signed" in caplog.text

        # Rerun: the same version, completed and approved, byte-identical to the local model.
        record = publish_run(run, registry=Registry(store.config(), multipart_threshold=PART,
                                                    multipart_chunksize=PART))
        assert record["version"] == version and not run.publish_pending.exists()
        fetched = reader.fetch_verified(name, version, tmp_path / "check-cache")
        for path in sorted(big_model.rglob("*")):
            if path.is_file():
                rel = path.relative_to(big_model)
                assert sha256_file(fetched.local_dir / rel) == sha256_file(path), rel
        assert publish_run(run)["manifest_sha256"] == record["manifest_sha256"], "a third run changes nothing"
        assert [(r["version"], r["approved"]) for r in reader.list_versions(name)] == [("v1", True), (version, True)]

        svc.handle.watcher.poll_once()
        assert svc.served == version
        assert svc.post("/v1/chat/completions", CHAT).json()["model"] == f"{name}:{version}"


def test_rerun_refuses_a_version_approved_for_other_files(store, tiny_model_dir, tmp_path):
    """Resuming never re-approves different bytes under an approved version."""
    from align.tiny import save_tiny_model

    if not store.running():
        store.restart()
    cfg = service_config(tmp_path, "pub-changed", store.config())
    run = passed_run(tmp_path, cfg, tiny_model_dir)
    first = publish_run(run)
    save_tiny_model(run.merged_model_dir, seed=9)  # the model folder changed after it was published
    with pytest.raises(Exception, match="already signed .* for other files"):
        publish_run(run)
    from typer.testing import CliRunner

    from harmgate.cli import app

    done = CliRunner().invoke(app, ["publish", str(run.root), "--version", "v-next"])
    assert done.exit_code == 0, done.output
    assert read_json(run.publish_record)["version"] == "v-next" != first["version"]


def test_restart_while_the_store_is_down_serves_the_verified_cache(store, tmp_path, caplog):
    """A service (or a gunicorn worker) restarted during an outage starts on the newest cached copy that still
    verifies offline, never on one this cache saw revoked or one whose bytes changed; revocations are remembered
    in the cache even if the signed revocation list later disappears from the bucket."""
    from align.tiny import save_tiny_model
    from serve.bootstrap import StartupError, build_service
    from harmgate.config import load_config

    if not store.running():
        store.restart()
    name, registry = "cache-fallback", Registry(store.config())
    for seed, version in enumerate(("v1", "v2", "v3")):
        registry.publish(name, save_tiny_model(tmp_path / version, seed=seed), verdict={"passed": True}, metrics={},
                         config={}, provenance={}, base_model="tiny", version=version)
    cfg = service_config(tmp_path, name, store.config(max_attempts=1), store_wait_s=1)
    with live_service(cfg) as svc:
        assert svc.served == "v3"
        registry.revoke(name, "v3", "found a jailbreak")
        svc.handle.watcher.poll_once()
        assert svc.served == "v2"  # v2 is now in the cache too, v3 remembered as revoked

    store.kill()
    with caplog.at_level("INFO", logger="harmgate.serve"), live_service(cfg) as svc:
        assert svc.served == "v2", "the newest verified copy that was not revoked"
        assert f"serving {name}:v2 from the verified cache" in caplog.text
        assert svc.get("/readyz").status_code == 200 and svc.post("/v1/chat/completions", CHAT).status_code == 200
        svc.handle.watcher.poll_once()
        assert "registry check failed" in caplog.text and svc.served == "v2"

    weights = tmp_path / "cache" / name / "v2" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(StartupError, match=rf"still unreachable after 1 s, and no copy in .*{name} verifies"):
        build_service(load_config(cfg), bind_host="127.0.0.1")
    weights.write_bytes(original)

    # Store back; a bucket writer deletes the revocation list: this cache still refuses v3.
    store.restart()
    registry.objects.delete(f"models/{name}/revocations.json")
    assert registry.latest_approved(name) == "v3"
    with live_service(cfg) as svc:
        assert svc.served == "v2"
    pinned = service_config(tmp_path, name, store.config(max_attempts=1), version="v3")
    with pytest.raises(StartupError, match=f"{name}:v3 refused by the revocation check: revoked at .*found a jailbreak"):
        build_service(load_config(pinned), bind_host="127.0.0.1")
