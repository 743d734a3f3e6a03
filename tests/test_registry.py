"""The signed registry against a real SeaweedFS: publish, verify, refuse, revoke, and tampering of every kind."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
from pathlib import Path

import pytest

from gates.signer import SigningKeyMissing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from gates.manifest import digest
from gates.publish import publish_run
from gates.registry import (IntegrityError, NotApproved, Registry, RegistryError, Revoked, StoreUnavailable,
                            VersionNotFound)
from harmgate.config import StoreConfig, parse_config
from harmgate.rundir import create_run_dir, read_json, write_json
from gates.trust import TrustError, TrustStore, pae
from tests.store_fixtures import SESSION_KEY, free_port

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


def _put(registry: Registry, key: str, data: bytes) -> None:
    registry.objects.client.put_object(Bucket=registry.objects.bucket, Key=key, Body=data)


def _flip_byte(registry: Registry, key: str) -> None:
    client, bucket = registry.objects.client, registry.objects.bucket
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def test_publish_fetch_round_trip(s3_store, signing_key, tiny_model_dir, tmp_path):
    registry, name = Registry(s3_store), _name()
    record = _publish(registry, tiny_model_dir, name, "v1")
    assert record["bucket"] == s3_store.bucket and record["endpoint"] == s3_store.endpoint_url
    assert record["signature_key"] == f"models/{name}/v1/model.sig"
    assert record["manifest_key"] == f"models/{name}/v1/files/harmgate/manifest.json"

    # Objects carry their sha256; the manifest holds everything the brief requires; the statement names the
    # manifest digest, the config digest and the code commit.
    shown = registry.show(name, "v1")
    assert shown["signature_status"] == "valid" and shown["revoked"] is None and shown["check"] is None
    manifest = shown["manifest"]
    assert manifest["base_model"] == "base/model" and manifest["verdict"] == PASSED
    assert manifest["provenance"]["sources"][0]["licence"] == "MIT" and "git_commit" in manifest
    assert manifest["created_at"] and shown["statement"]["manifest_sha256"] == record["manifest_sha256"]
    assert shown["statement"]["config_sha256"] == digest({"name": name})
    assert shown["statement"]["git_commit"] == manifest["git_commit"]
    assert shown["key_id"] == SESSION_KEY.key_id
    records = {e["path"] for e in manifest["files"] if e["path"].startswith("harmgate/")}
    assert records == {"harmgate/verdict.json", "harmgate/data_manifest.json"}
    weights = next(e for e in manifest["files"] if e["path"] == "model.safetensors")
    head = registry.objects.client.head_object(Bucket=s3_store.bucket, Key=f"models/{name}/v1/files/model.safetensors")
    assert head["Metadata"]["sha256"] == weights["sha256"] and head["ContentLength"] == weights["size"]

    model = registry.fetch_verified(name, "v1", tmp_path / "cache")
    assert model.local_dir == tmp_path / "cache" / name / "v1" and model.manifest_sha256 == record["manifest_sha256"]
    for entry in manifest["files"]:
        if not entry["path"].startswith("harmgate/"):
            assert (model.local_dir / entry["path"]).read_bytes() == (tiny_model_dir / entry["path"]).read_bytes()
    assert json.loads((model.local_dir / "harmgate" / "verdict.json").read_text()) == PASSED
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
    with pytest.raises(IntegrityError, match=r"sub/tokenizer\.json is signed but missing"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")
    left = [p.name for p in (tmp_path / "cache" / name).iterdir()]
    assert left == [".revocations.json"], "no partial download left behind (only the revocation list accepted)"


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


def test_forged_statement_and_copied_signature_are_rejected(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path, "good"), name, "v1")
    _publish(registry, _model(tmp_path, "evil"), name, "v2")
    # An attacker with bucket write access re-signs v2 with a key of their own, pretending it is the trusted one:
    # the bundle names the trusted key id, but the signature is theirs.
    bundle = json.loads(registry.objects.get_bytes(f"models/{name}/v2/model.sig"))
    attacker = ec.generate_private_key(ec.SECP256R1())
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "00" * 32
    payload = json.dumps(statement).encode()
    envelope["payload"] = base64.b64encode(payload).decode()
    envelope["signatures"][0]["sig"] = base64.b64encode(attacker.sign(
        pae("application/vnd.in-toto+json", payload), ec.ECDSA(hashes.SHA256()))).decode()
    _put(registry, f"models/{name}/v2/model.sig", json.dumps(bundle).encode())
    with pytest.raises(NotApproved, match=r"refused by the signature check: the signature does not verify"):
        registry.fetch_verified(name, "v2", tmp_path / "cache")
    assert registry.show(name, "v2")["signature_status"] == "invalid"
    assert registry.latest_approved(name) == "v1", "a forged newer version must not be chosen"

    # Copying v1's genuine signature onto v2 fails too: the statement is bound to name and version.
    _put(registry, f"models/{name}/v2/model.sig", registry.objects.get_bytes(f"models/{name}/v1/model.sig"))
    with pytest.raises(NotApproved, match=r"signed for .*:v1, not .*:v2"):
        registry.fetch_verified(name, "v2", tmp_path / "cache")

    # A truncated signature file, and one by a key nobody trusts.
    genuine = registry.objects.get_bytes(f"models/{name}/v1/model.sig")
    _put(registry, f"models/{name}/v1/model.sig", genuine[: len(genuine) // 2])
    with pytest.raises(NotApproved, match="signature check: the signature file is malformed or truncated"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")
    other = Registry(s3_store, trust=TrustStore({}, "empty-trust.json"))
    _put(registry, f"models/{name}/v1/model.sig", genuine)
    with pytest.raises(NotApproved, match="unknown key check: signed by key .* not in the trust file"):
        other.fetch_verified(name, "v1", tmp_path / "cache2")


def test_manifest_edited_after_signing_is_a_manifest_digest_failure(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path), name, "v1")
    # Swap the weights and "fix up" the manifest to match them: the statement still pins the old digests.
    _flip_byte(registry, f"models/{name}/v1/files/model.safetensors")
    manifest = registry.show(name, "v1")["manifest"]
    manifest["verdict"] = {"passed": True, "kpis": []}
    _put(registry, f"models/{name}/v1/files/harmgate/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="refused by the manifest digest check: harmgate/manifest.json was "
                                             "changed after signing"):
        registry.fetch_verified(name, "v1", tmp_path / "cache")


def test_fetch_needs_only_the_trust_file(s3_store, signing_key, tmp_path, monkeypatch):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path), name, "v1")
    monkeypatch.delenv(s3_store.signing_key_env)  # a serving node: public keys only
    assert Registry(s3_store).fetch_verified(name, "v1", tmp_path / "cache").version == "v1"
    monkeypatch.delenv(s3_store.trust_file_env)
    with pytest.raises(TrustError, match="no trust file"):
        Registry(s3_store).fetch_verified(name, "v1", tmp_path / "cache")


def test_revoked_version_is_refused(s3_store, signing_key, tmp_path):
    registry, name = Registry(s3_store), _name()
    _publish(registry, _model(tmp_path, "1"), name, "v1")
    _publish(registry, _model(tmp_path, "2"), name, "v2")
    assert registry.latest_approved(name) == "v2"
    record = registry.revoke(name, "v2", "jailbreak found in red-teaming")
    assert record["sequence"] == 2, "the first publish wrote sequence 1"
    again = registry.revoke(name, "v2", "again")
    assert again["revoked_at"] == record["revoked_at"] and again["sequence"] == 2  # idempotent
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
    # An interrupted publish (files and manifest, no signature) is listed but never served.
    _publish(registry, _model(tmp_path), name, "v1")
    registry.objects.client.delete_object(Bucket=s3_store.bucket, Key=f"models/{name}/v1/model.sig")
    assert registry.latest_approved(name) is None
    assert registry.list_versions(name)[0]["signature"] == "missing"
    with pytest.raises(NotApproved, match=r"no signature \(model.sig\)"):
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


# -- transfers: multipart, retries with backoff, verification, and approval last ----------------------------
class FaultyProxy:
    """A real HTTP proxy in front of SeaweedFS. It forwards requests verbatim (SigV4 signatures stay valid) and
    answers the ones matching a rule with 503 SlowDown, S3's "retry later", counting every request it sees."""

    SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, upstream: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.rules: list[dict] = []
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, method: str, contains: str, times: int | None = None) -> None:
        """Answer 503 to ``method`` requests whose path contains ``contains``: the first ``times`` (None: all)."""
        with self.lock:
            self.rules.append({"method": method, "contains": contains, "left": times})

    def _should_fail(self, method: str, path: str) -> bool:
        with self.lock:
            for rule in self.rules:
                if rule["method"] == method and rule["contains"] in path and rule["left"] != 0:
                    if rule["left"] is not None:
                        rule["left"] -= 1
                    return True
        return False

    def handle(self, req) -> None:
        import http.client

        assert "chunked" not in (req.headers.get("Transfer-Encoding") or ""), "this proxy forwards sized bodies only"
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        if self._should_fail(req.command, req.path):
            status, headers, data = 503, [("Content-Type", "application/xml")], self.SLOWDOWN
        else:
            conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
            conn.putrequest(req.command, req.path, skip_host=True, skip_accept_encoding=True)
            for k, v in req.headers.items():
                if k.lower() not in ("expect", "connection"):  # the proxy already answered 100-continue
                    conn.putheader(k, v)
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
            headers = [(k, v) for k, v in resp.getheaders()
                       if k.lower() not in ("transfer-encoding", "connection", "content-length")]
            if req.command == "HEAD":
                headers.append(("Content-Length", resp.getheader("Content-Length") or "0"))
            conn.close()
        with self.lock:
            self.log.append((req.command, req.path, status))
        req.send_response_only(status)
        for k, v in headers:
            req.send_header(k, v)
        if req.command != "HEAD":
            req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)

    def requests(self, contains: str, method: str | None = None) -> list[tuple[str, str, int]]:
        return [r for r in self.log if contains in r[1] and (method is None or r[0] == method)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxied(s3_store, s3_store_info, signing_key, monkeypatch):
    """(proxy, StoreConfig through the proxy): credentials from the environment, as CI or production give them."""
    proxy = FaultyProxy(s3_store.endpoint_url)
    monkeypatch.setenv(s3_store.access_key_env, s3_store_info.access_key)
    monkeypatch.setenv(s3_store.secret_key_env, s3_store_info.secret_key)
    yield proxy, s3_store.model_copy(update={"endpoint_url": proxy.url, "max_attempts": 3})
    proxy.close()


def test_transient_errors_are_retried_and_signature_is_written_last(proxied, s3_store, tmp_path):
    proxy, store = proxied
    name = _name()
    proxy.fail("PUT", f"/{name}/v1/files/model.safetensors", times=2)  # S3 says "slow down" twice
    _publish(Registry(store), _model(tmp_path), name, "v1")
    puts = [status for _, _, status in proxy.requests(f"/{name}/v1/files/model.safetensors", "PUT")]
    assert puts == [503, 503, 200], "botocore retried the upload with backoff until it went through"

    order = [path for _, path, status in proxy.log if status < 300 and f"/{name}/v1/" in path]
    signature = max(i for i, p in enumerate(order) if p.endswith("/model.sig"))
    assert signature == len(order) - 1, "the signature is the very last write"
    assert all(i < signature for i, p in enumerate(order) if "/files/" in p), "every file (and its check) first"
    assert Registry(s3_store).fetch_verified(name, "v1", tmp_path / "cache").version == "v1"


def test_persistent_failure_leaves_no_manifest_and_no_signature(proxied, s3_store, tmp_path):
    proxy, store = proxied
    name = _name()
    proxy.fail("PUT", f"/{name}/v1/files/sub/tokenizer.json")  # the last model file never uploads
    with pytest.raises(StoreUnavailable, match="503"):
        _publish(Registry(store), _model(tmp_path), name, "v1")
    assert len(proxy.requests(f"/{name}/v1/files/sub/tokenizer.json", "PUT")) == store.max_attempts
    direct = Registry(s3_store)
    uploaded = direct.objects.list_keys(f"models/{name}/v1/")
    assert f"models/{name}/v1/files/model.safetensors" in uploaded, "earlier files did upload"
    assert not any(k.endswith(("manifest.json", "model.sig")) for k in uploaded)
    assert direct.list_versions(name) == [] and direct.latest_approved(name) is None
    with pytest.raises(VersionNotFound):
        direct.fetch_verified(name, "v1", tmp_path / "cache")


def test_large_files_go_multipart_and_are_verified_by_etag(proxied, s3_store, tmp_path):
    proxy, store = proxied
    name = _name()
    model = _model(tmp_path)
    (model / "model.safetensors").write_bytes(secrets.token_bytes(12 * 2**20 + 4321))  # 3 parts of 5 MiB
    proxy.fail("PUT", "partNumber=2", times=1)  # one part fails once, and is retried alone
    registry = Registry(store, multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    _publish(registry, model, name, "v1")
    key = f"/{name}/v1/files/model.safetensors"
    parts = [(p, s) for m, p, s in proxy.requests(key, "PUT") if "partNumber=" in p]
    assert sorted({p.split("partNumber=")[1].split("&")[0] for p, _ in parts}) == ["1", "2", "3"]
    assert [s for p, s in parts if "partNumber=2&" in p + "&"] == [503, 200]
    assert any("uploads" in p for _, p, _ in proxy.requests(key, "POST")), "a multipart upload was started"
    head = Registry(s3_store).objects.client.head_object(
        Bucket=s3_store.bucket, Key=f"models/{name}/v1/files/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3")
    local = Registry(s3_store).fetch_verified(name, "v1", tmp_path / "cache").local_dir
    assert (local / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()


def test_upload_refuses_a_file_that_changed_after_the_manifest(s3_store, tmp_path):
    from harmgate.objectstore import ObjectStore, sha256_and_etag

    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 1000)
    digest_, etag = sha256_and_etag(path, multipart_threshold=5 * 2**20, chunksize=5 * 2**20)
    assert etag == __import__("hashlib").md5(b"x" * 1000).hexdigest()
    objects = ObjectStore(s3_store)
    key = f"models/{_name()}/v1/files/weights.bin"
    with pytest.raises(RegistryError, match="changed after the manifest was built"):
        objects.upload_file(path, key, sha256="0" * 64, size=1000)
    assert not objects.exists(key), "nothing is uploaded"
    objects.upload_file(path, key, sha256=digest_, size=1000)
    assert objects.exists(key)


def test_cli_registry_list_show_revoke(s3_store, signing_key, tmp_path):
    from typer.testing import CliRunner

    import yaml
    from harmgate.cli import app

    name = _name()
    registry = Registry(s3_store)
    _publish(registry, _model(tmp_path, "1"), name, "v1")
    _publish(registry, _model(tmp_path, "2"), name, "v2")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_run_config(name, s3_store)))
    runner = CliRunner()
    listed = runner.invoke(app, ["registry", "list", name, "--config", str(cfg)])
    assert listed.exit_code == 0, listed.output
    assert "v1" in listed.output and "v2" in listed.output and "signature valid" in listed.output
    revoked = runner.invoke(app, ["registry", "revoke", name, "v2", "--reason", "red team", "--config", str(cfg)])
    assert revoked.exit_code == 0 and registry.latest_approved(name) == "v1"
    shown = runner.invoke(app, ["registry", "show", name, "v2", "--config", str(cfg)])
    assert shown.exit_code == 0 and '"reason": "red team"' in shown.output
    missing = runner.invoke(app, ["registry", "show", name, "v9", "--config", str(cfg)])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_publish_run_attaches_a_signed_report(s3_store, signing_key, tmp_path):
    name = _name()
    run = create_run_dir(parse_config(_run_config(name, s3_store)), tmp_path / "run")
    shutil.copytree(_model(tmp_path), run.merged_model_dir)
    write_json(run.eval_summary, {"arms": {"tuned": {"advbench_refusal": {"compliance_rate": {
        "value": 0.05, "n": 40, "count": 2, "ci95": [0.01, 0.17]}}}}})
    write_json(run.verdict, {"passed": True, "kpis": [{"name": "harm", "passed": True}]})
    record = publish_run(run, version="v1")
    assert record["attachments"] == ["report.html"]
    registry = Registry(s3_store)
    html = registry.fetch_attachment(name, "v1", "report.html").decode()
    assert f"<title>harmgate · {name}</title>" in html and "PASSED" in html
    key = f"models/{name}/v1/files/harmgate/report.html"  # where serve/dashboard.py looks for it
    assert registry.show(name, "v1")["manifest"]["attachments"]["report.html"]["size"] == len(html.encode())

    # A bucket writer without the key swaps the page: refused, because the signed statement pins its sha256.
    registry.objects.client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"<script>alert(1)</script>")
    with pytest.raises(IntegrityError, match="report.html sha256 mismatch"):
        registry.fetch_attachment(name, "v1", "report.html")
    with pytest.raises(RegistryError, match="invalid attachment name"):
        registry.fetch_attachment(name, "v1", "manifest.json")
    with pytest.raises(VersionNotFound, match="no signed harmgate/notes.md"):
        registry.fetch_attachment(name, "v1", "notes.md")
