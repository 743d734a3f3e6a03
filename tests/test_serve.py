"""The service as it runs in production: `python -m serve.runner` in its own process, over real HTTP, fetching a
published tiny model from the real store, and refusing to start on anything it cannot trust."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from gates.registry import Registry
from harmgate.config import StoreConfig
from tests.store_fixtures import SIGNING_KEY, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSED = {"passed": True, "kpis": []}
SECRET_PROMPT = "zebra-canary-7731"  # must never appear in the service's log


def _config(tmp_path: Path, name: str, store: StoreConfig, **service) -> Path:
    data = {
        "name": name, "model": {"base": "harmgate/tiny-random-llama"},
        "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
        "evals": {"suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "harm", "metric": "advbench_refusal.compliance_rate", "direction": "lower",
                             "max": 0.1}]},
        "store": store.model_dump(),
        "service": {"cache_dir": str(tmp_path / "cache"), "max_new_tokens": 12, "max_prompt_tokens": 200, **service},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, StoreConfig().signing_key_env: SIGNING_KEY, "PYTHONUNBUFFERED": "1"}


def _publish(store: StoreConfig, model_dir: Path, name: str) -> None:
    os.environ[store.signing_key_env] = SIGNING_KEY
    try:
        Registry(store).publish(name, model_dir, verdict=PASSED, metrics={}, config={}, provenance={},
                                base_model="harmgate/tiny-random-llama", version="v1")
    finally:
        del os.environ[store.signing_key_env]


def _run_refusing(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve.runner", "--config", str(config), "--port", str(free_port())],
                          cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def service(s3_store, tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A running service on a free port; yields (base URL, its log file)."""
    tmp = tmp_path_factory.mktemp("serve")
    _publish(s3_store, tiny_model_dir, "tiny-serve")
    port = free_port()
    log = tmp / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve.runner", "--config",
                                 str(_config(tmp, "tiny-serve", s3_store)), "--port", str(port)],
                                cwd=REPO_ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service did not answer within 90 s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_healthz(service, s3_store):
    url, _ = service
    body = requests.get(f"{url}/healthz", timeout=5).json()
    shown = Registry(s3_store).show("tiny-serve", "v1")
    assert body == {"status": "ok", "model": "tiny-serve", "version": "v1",
                    "manifest_sha256": shown["manifest_sha256"]}


def test_chat_completion(service):
    url, log = service
    resp = requests.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": "tiny-serve", "messages": [{"role": "user", "content": f"Say hello {SECRET_PROMPT}"}],
        "max_tokens": 5, "temperature": 0})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-serve:v1" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 5 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert SECRET_PROMPT not in log.read_text(), "prompt text must not be logged"


def test_max_tokens_is_capped_and_sampling_works(service):
    url, _ = service
    resp = requests.post(f"{url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count."}],
        "max_tokens": 10_000, "temperature": 0.8, "top_p": 0.9, "stop": ["\n\n"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] <= 12  # the service's max_new_tokens


@pytest.mark.parametrize("body, field", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi " * 300}]}, "messages"),  # over max_prompt_tokens
    ([1, 2], "body"),
])
def test_bad_request_names_the_field(service, body, field):
    url, _ = service
    resp = requests.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"


def test_invalid_json_and_unknown_model(service):
    url, _ = service
    resp = requests.post(f"{url}/v1/chat/completions", data=b"{not json", timeout=10,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = requests.post(f"{url}/v1/chat/completions", timeout=10,
                         json={"model": "other", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "model"
    assert requests.get(f"{url}/nope", timeout=10).status_code == 404


def test_refuses_to_start_when_nothing_is_approved(s3_store, tmp_path):
    done = _run_refusing(_config(tmp_path, "never-published", s3_store))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and lines[0].startswith("harmgate.serve: refusing to start: no approved")


def test_refuses_to_start_on_tampered_weights(s3_store, tiny_model_dir, tmp_path):
    _publish(s3_store, tiny_model_dir, "tiny-tampered")
    client, key = Registry(s3_store).objects.client, "models/tiny-tampered/v1/files/model.safetensors"
    data = bytearray(client.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read())
    data[-10] ^= 0xFF
    client.put_object(Bucket=s3_store.bucket, Key=key, Body=bytes(data))

    done = _run_refusing(_config(tmp_path, "tiny-tampered", s3_store))
    assert done.returncode == 2, done.stderr
    assert "harmgate.serve: refusing to start:" in done.stderr and "model.safetensors sha256 mismatch" in done.stderr
    assert not (tmp_path / "cache" / "tiny-tampered" / "v1").exists()


def test_refuses_to_start_on_pinned_unknown_version(s3_store, tmp_path):
    done = _run_refusing(_config(tmp_path, "tiny-serve", s3_store, version="v999"))
    assert done.returncode == 2 and "refusing to start: tiny-serve:v999 not found" in done.stderr
