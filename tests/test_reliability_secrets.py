"""Secrets never leak: a publish -> report -> registry -> serve flow runs with known secret values (the publisher's
private key, made by `harmgate keys generate`; the S3 access and secret keys, the API key, a wrong key a client sent, and a prompt the service must not log), then
every log, CLI output, run-directory file, cache file, registry object and HTTP response is searched for them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gates.registry import Registry
from harmgate.config import StoreConfig
from tests.reliability_support import passed_run, service_config
from tests.store_fixtures import free_port
from tests.test_serve import start_process, stop_process

REPO = Path(__file__).resolve().parent.parent


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_no_secret_in_logs_manifests_reports_or_responses(s3_store, s3_store_info, tiny_model_dir, tmp_path,
                                                          monkeypatch):
    store_defaults = StoreConfig()
    keys_dir = tmp_path / "keys"
    outputs: dict[str, str] = {}
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("HARMGATE_API_KEYS", store_defaults.signing_key_env, store_defaults.trust_file_env)}

    def cli(*args: str, env: dict[str, str]) -> None:
        done = subprocess.run([sys.executable, "-m", "harmgate", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs[" ".join(args[:2])] = done.stdout + done.stderr

    # The publisher's own key pair, made by the CLI; its private key is the secret searched for below (every
    # line of its PEM body, and the private scalar in hex).
    cli("keys", "generate", "--dir", str(keys_dir), env=base_env)
    pem = (keys_dir / "signing.key").read_text()
    private = load_pem_private_key(pem.encode(), None)
    pem_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    trust = str(keys_dir / "trust.json")
    # This process's Registry verifies with the same trust file (the session's may be in os.environ).
    monkeypatch.setenv(store_defaults.trust_file_env, trust)
    monkeypatch.delenv(store_defaults.signing_key_env, raising=False)
    api_key = "api-" + secrets.token_hex(20)
    wrong_key = "wrong-" + secrets.token_hex(20)  # what a client mistakenly sends must not be logged either
    prompt = "canary-prompt-" + secrets.token_hex(8)
    secret_values = {"S3 secret key": s3_store_info.secret_key, "API key": api_key,
                     "wrong API key": wrong_key, "prompt": prompt, "private key (PEM body)": "".join(pem_lines),
                     "private key (scalar)": format(private.private_numbers().private_value, "x")}
    secret_values.update({f"private key PEM line {i}": line for i, line in enumerate(pem_lines)})
    # A serving node: the trust file only. The publisher: the same plus its private key (file and variable).
    env = {**base_env, "PYTHONUNBUFFERED": "1", store_defaults.trust_file_env: trust,
           store_defaults.access_key_env: s3_store_info.access_key,
           store_defaults.secret_key_env: s3_store_info.secret_key, "HARMGATE_API_KEYS": api_key}
    publisher_env = {**env, store_defaults.signing_key_env: pem}
    # Credentials come from the environment only, as in production (not from the local store's state.json).
    store = s3_store.model_copy(update={"local_state_dir": str(tmp_path / "no-state")})
    name = "secrets-flow"
    cfg = service_config(tmp_path, name, store, cache_dir=str(tmp_path / "cache"), registry_poll_s=0.5)
    run = passed_run(tmp_path, cfg, tiny_model_dir)

    cli("publish", str(run.root), env=publisher_env)
    cli("report", str(run.root), env=env)
    cli("registry", "list", name, "--config", str(cfg), env=env)
    version = Registry(store.model_copy(update={"local_state_dir": s3_store.local_state_dir})).latest_approved(name)
    cli("registry", "show", name, version, "--config", str(cfg), env=env)
    cli("keys", "list", "--trust-file", trust, env=env)

    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_process([sys.executable, "-m", "serve.runner", "--config", str(cfg), "--port", str(port)], log,
                         env, url)
    try:
        auth = {"Authorization": f"Bearer {api_key}"}
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
        responses = [
            requests.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60),
            requests.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=auth, timeout=60),
            requests.post(f"{url}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {wrong_key}"}),
            requests.post(f"{url}/v1/chat/completions", json={"messages": [{"role": prompt, "content": 1}]},
                          headers=auth, timeout=60),
            requests.get(f"{url}/v1/models", headers=auth, timeout=30),
            requests.get(f"{url}/dashboard", headers=auth, timeout=30),
            requests.get(f"{url}/metrics", timeout=30),
            requests.get(f"{url}/openapi.json", timeout=30),
            requests.get(f"{url}/healthz", timeout=30),
        ]
        assert [r.status_code for r in responses] == [200, 200, 401, 400, 200, 200, 200, 200, 200]
    finally:
        assert stop_process(proc) == 0
    cli("registry", "revoke", name, version, "--reason", "end of test", "--config", str(cfg), env=publisher_env)

    haystacks = {f"CLI `harmgate {k}`": v for k, v in outputs.items()}
    haystacks["service log"] = log.read_text()
    for i, resp in enumerate(responses):
        haystacks[f"response {i} {resp.request.method} {resp.request.path_url}"] = resp.text + str(resp.headers)
    for path in _files(run.root, tmp_path / "cache", keys_dir):
        if path.name == "signing.key":
            continue  # the key file itself
        haystacks[str(path)] = path.read_bytes().decode("utf-8", "replace")
    registry = Registry(s3_store)
    for key in registry.objects.list_keys(f"{s3_store.prefix}/{name}/"):
        haystacks[f"s3://{s3_store.bucket}/{key}"] = registry.objects.get_bytes(key).decode("utf-8", "replace")

    assert any(k.endswith("/manifest.json") for k in haystacks) and any(k.endswith("report.html") for k in haystacks)
    assert "chatcmpl-" in haystacks["service log"], "the log is there and records requests (ids, counts)"
    leaks = [f"{what} in {where}" for where, text in haystacks.items() for what, value in secret_values.items()
             if what != "prompt" and value in text]
    # The prompt may come back in the HTTP response to its own sender; it must not be in logs or stored files.
    leaks += [f"prompt in {where}" for where, text in haystacks.items()
              if prompt in text and not where.startswith("response")]
    assert not leaks, leaks
    config_text = yaml.safe_load((run.root / "config.yaml").read_text())["store"]
    assert config_text["secret_key_env"] == store_defaults.secret_key_env, "configs name variables, never values"
