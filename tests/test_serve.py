"""The service as it runs in production: `python -m serve.runner` in its own process, over real HTTP, fetching a
published tiny model from the real store (SeaweedFS), moderating with a real scorer, and refusing to start on
anything it cannot trust. One server for the module; the revocation and hot-swap tests run last, in order."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from gates.registry import Registry
from harmgate.config import StoreConfig
from tests.store_fixtures import SIGNING_KEY, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSED = {"passed": True, "kpis": [{"name": "harm", "metric": "advbench_refusal.compliance_rate", "passed": True,
                                    "severity": "block", "base": 0.5, "tuned": 0.05}]}
SECRET_PROMPT = "zebra-canary-7731"  # must never appear in the service's log
API_KEY = "test-key-" + secrets.token_hex(16)
NAME = "tiny-serve"
REFUSAL = "Sorry, I will not say that."


def write_config(tmp_path: Path, name: str, store: StoreConfig, **service) -> Path:
    data = {
        "name": name, "model": {"base": "harmgate/tiny-random-llama"},
        "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
        "evals": {"suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "harm", "metric": "advbench_refusal.compliance_rate", "direction": "lower",
                             "max": 0.1}]},
        "store": store.model_dump(),
        "service": {"cache_dir": str(tmp_path / "cache"), "max_new_tokens": 12, "max_prompt_tokens": 200,
                    "store_wait_s": 2, **service},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def blocklist_moderation(path: Path, **extra) -> dict:
    return {"scorer": "serve.blocklist:BlocklistScorer", "scorer_args": {"path": str(path)}, "threshold": 0.5,
            "refusal": REFUSAL, **extra}


def server_env(**extra: str) -> dict[str, str]:
    """A serving node's environment: the trust file (public keys, exported for the session), never a private key."""
    env = {k: v for k, v in os.environ.items() if k not in ("HARMGATE_API_KEYS", StoreConfig().signing_key_env)}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _as_publisher(store: StoreConfig, action):
    """Run ``action`` with the publisher's private key in the environment (only the publisher holds it)."""
    saved = os.environ.get(store.signing_key_env)
    os.environ[store.signing_key_env] = SIGNING_KEY
    try:
        return action()
    finally:
        if saved is None:
            del os.environ[store.signing_key_env]
        else:
            os.environ[store.signing_key_env] = saved


def publish(store: StoreConfig, model_dir: Path, name: str, version: str, **attachments: bytes) -> None:
    _as_publisher(store, lambda: Registry(store).publish(
        name, model_dir, verdict=PASSED, metrics={}, config={}, provenance={},
        base_model="harmgate/tiny-random-llama", version=version,
        attachments={k.replace("_", "."): v for k, v in attachments.items()} or None))


def revoke(store: StoreConfig, name: str, version: str, reason: str) -> dict:
    return _as_publisher(store, lambda: Registry(store).revoke(name, version, reason))


def run_refusing(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve.runner", "--config", str(config), "--port", str(free_port()),
                           *args], cwd=REPO_ROOT, env=env or server_env(), capture_output=True, text=True, timeout=90)


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def start_process(cmd: list[str], log: Path, env: dict[str, str], url: str, timeout: float = 120) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def up():
        if proc.poll() is not None:
            pytest.fail(f"{cmd[:3]} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not listening yet / no worker booted yet
            return False

    wait_until(up, timeout, f"{cmd[:3]} to answer:\n{log.read_text() if log.exists() else ''}")
    return proc


def stop_process(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class Service:
    url: str
    log: Path
    blocklist: Path
    tmp: Path

    def post(self, body: dict, *, key: str | None = API_KEY, stream: bool = False, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=60,
                             stream=stream, **kw)

    def get(self, path: str, *, key: str | None = API_KEY) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=30)

    def metric(self, line_start: str) -> float:
        text = self.get("/metrics", key=None).text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
        return sum(values)


@pytest.fixture(scope="module")
def service(s3_store, tiny_model_dir, tmp_path_factory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("serve")
    publish(s3_store, tiny_model_dir, NAME, "v1")
    blocklist = tmp / "blocklist.txt"
    blocklist.write_text("# terms the service must never send\n")
    report = tmp / "report.html"
    report.write_text("<!doctype html><title>harmgate report</title><h1>KPIs</h1>")
    config = write_config(tmp, NAME, s3_store, registry_poll_s=0.5, max_body_bytes=16384,
                          dashboard_path=str(report), moderation=blocklist_moderation(blocklist))
    with runner_process(config, tmp / "serve.log") as url:
        yield Service(url, tmp / "serve.log", blocklist, tmp)


@contextmanager
def runner_process(config: Path, log: Path) -> Iterator[str]:
    """``python -m serve.runner`` on a free loopback port with API_KEY, until the block ends; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_process([sys.executable, "-m", "serve.runner", "--config", str(config), "--port", str(port)], log,
                         server_env(HARMGATE_API_KEYS=API_KEY), url)
    try:
        yield url
    finally:
        stop_process(proc)


CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 12, "temperature": 0}


def sse_events(resp: requests.Response) -> list:
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for line in resp.iter_lines(decode_unicode=True):
        if line:
            assert line.startswith("data: "), line
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# -- health, auth, models ------------------------------------------------------------------------------------
def test_healthz_and_readyz_need_no_key(service, s3_store):
    body = service.get("/healthz", key=None).json()
    shown = Registry(s3_store).show(NAME, "v1")
    assert body == {"status": "ok", "ready": True, "model": NAME, "version": "v1",
                    "manifest_sha256": shown["manifest_sha256"]}
    ready = service.get("/readyz", key=None)
    assert ready.status_code == 200 and ready.json()["model"] == f"{NAME}:v1"


@pytest.mark.parametrize("path, method", [("/v1/models", "get"), ("/v1/chat/completions", "post"),
                                          ("/dashboard", "get")])
@pytest.mark.parametrize("header", [None, "Bearer wrong-key-0123456789abcdef", f"Basic {API_KEY}", "Bearer "])
def test_protected_endpoints_need_the_key(service, path, method, header):
    headers = {"Authorization": header} if header else {}
    resp = requests.request(method, f"{service.url}{path}", headers=headers, json=CHAT, timeout=30)
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_models_lists_the_verified_version_and_gate(service, s3_store):
    resp = service.get("/v1/models")
    assert resp.status_code == 200, resp.text
    [model] = resp.json()["data"]
    assert model["id"] == f"{NAME}:v1" and model["version"] == "v1" and model["object"] == "model"
    assert model["manifest_sha256"] == Registry(s3_store).show(NAME, "v1")["manifest_sha256"]
    assert model["gate"]["passed"] is True and model["gate"]["kpis"][0]["name"] == "harm"
    assert model["moderation"] == {"scorer": "blocklist", "threshold": 0.5}


# -- completions ---------------------------------------------------------------------------------------------
def test_chat_completion(service):
    resp = service.post({**CHAT, "model": NAME, "messages": [{"role": "user", "content": f"Say hi {SECRET_PROMPT}"}],
                         "max_tokens": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == f"{NAME}:v1" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    assert choice["moderation"]["flagged"] is False and choice["moderation"]["scorer"] == "blocklist"
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 5 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert SECRET_PROMPT not in service.log.read_text(), "prompt text must not be logged"
    assert re.search(rf"{body['id']} model={NAME}:v1 stream=False prompt_tokens=\d+ completion_tokens=\d+",
                     service.log.read_text())


def test_sampling_and_stop_strings(service):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count."}]
    resp = service.post({"messages": messages, "max_tokens": 12, "temperature": 0.8, "top_p": 0.9, "stop": ["\n\n"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] <= 12
    greedy = service.post(CHAT).json()["choices"][0]["message"]["content"]
    stop = greedy[2:4]
    cut = service.post({**CHAT, "stop": stop}).json()["choices"][0]
    assert cut["message"]["content"] == greedy[:greedy.find(stop)] and cut["finish_reason"] == "stop"


def test_streaming_matches_the_plain_reply(service):
    plain = service.post(CHAT).json()["choices"][0]
    resp = service.post({**CHAT, "stream": True, "stream_options": {"include_usage": True}}, stream=True)
    assert resp.status_code == 200
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == f"{NAME}:v1" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["message"]["content"]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] == plain["finish_reason"]
    assert final[0]["choices"][0]["moderation"]["flagged"] is False
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_concurrent_requests_share_the_model(service):
    bodies = [{**CHAT, "messages": [{"role": "user", "content": f"Tell me about {i}"}]} for i in range(6)]
    expected = [service.post(b).json()["choices"][0]["message"]["content"] for b in bodies]
    before = service.metric("harmgate_batch_size_count")
    results: list = [None] * len(bodies)

    def call(i: int) -> None:
        results[i] = service.post(bodies[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * len(bodies)
    # Batched greedy generation gives each request exactly what it got alone.
    assert [r.json()["choices"][0]["message"]["content"] for r in results] == expected
    assert service.metric("harmgate_batch_size_count") - before < len(bodies), "no two requests were batched"


# -- input limits --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, field", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 13}, "max_tokens"),  # over the service's 12
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi " * 300}]}, "messages"),  # over max_prompt_tokens
    ([1, 2], "body"),
])
def test_bad_request_names_the_field(service, body, field):
    resp = service.post(body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"


def test_oversized_body_is_413(service):
    resp = service.post({"messages": [{"role": "user", "content": "x" * 20_000}]})
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]["message"] == "request body is over this service's limit of 16384 bytes"


def test_invalid_json_and_unknown_model(service):
    resp = requests.post(f"{service.url}/v1/chat/completions", data=b"{not json", timeout=10,
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = service.post({**CHAT, "model": "other"})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "model"
    assert service.get("/nope").status_code == 404


# -- moderation ----------------------------------------------------------------------------------------------
def _term_in(text: str) -> str:
    words = sorted(re.findall(r"[A-Za-z]{3,}", text), key=len, reverse=True)
    return words[0] if words else text.strip()[:3]


def test_moderation_replaces_and_counts(service):
    body = {**CHAT, "messages": [{"role": "user", "content": "Tell me a secret"}]}
    reply = service.post(body).json()["choices"][0]["message"]["content"]
    term = _term_in(reply)
    assert term, f"the tiny model's reply {reply!r} has nothing to block"
    blocks = service.metric('harmgate_moderation_blocks_total{mode="full"}')
    service.blocklist.write_text(f"{term}\n")
    try:
        resp = service.post(body)
        assert resp.status_code == 200, resp.text
        choice = resp.json()["choices"][0]
        assert choice["message"]["content"] == REFUSAL and choice["finish_reason"] == "content_filter"
        assert choice["moderation"] == {"flagged": True, "score": 1.0, "threshold": 0.5, "scorer": "blocklist"}
        assert service.metric('harmgate_moderation_blocks_total{mode="full"}') == blocks + 1

        stream_blocks = service.metric('harmgate_moderation_blocks_total{mode="stream"}')
        events = sse_events(service.post({**body, "stream": True}, stream=True))
        sent = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1] if c["choices"])
        assert term.lower() not in sent.lower(), "streaming leaked moderated text"
        assert sent.endswith(REFUSAL) and events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
        assert events[-2]["choices"][0]["moderation"]["flagged"] is True
        assert service.metric('harmgate_moderation_blocks_total{mode="stream"}') == stream_blocks + 1
    finally:
        service.blocklist.write_text("# empty again\n")
    assert service.post(body).json()["choices"][0]["message"]["content"] == reply


# -- metrics and dashboard -----------------------------------------------------------------------------------
def test_metrics(service):
    service.post(CHAT)
    text = service.get("/metrics", key=None).text
    for name in ('harmgate_requests_total{endpoint="chat",status="200"}',
                 'harmgate_requests_total{endpoint="chat",status="401"}',
                 'harmgate_request_duration_seconds_bucket{endpoint="chat",le="+Inf"}',
                 'harmgate_tokens_total{kind="completion"}', "harmgate_time_to_first_token_seconds_count",
                 "harmgate_moderation_score_count", "harmgate_batch_size_count", "harmgate_model_ready 1.0",
                 f'harmgate_model_info{{manifest_sha256="'):
        assert name in text, f"{name} missing from /metrics"
    assert service.metric('harmgate_tokens_total{kind="completion"}') > 0


def test_dashboard_serves_the_report(service):
    resp = service.get("/dashboard")
    assert resp.status_code == 200 and "<h1>KPIs</h1>" in resp.text
    assert resp.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


def test_dashboard_serves_the_published_report_only_if_it_verifies(s3_store, tiny_model_dir, tmp_path, monkeypatch):
    from harmgate.config import load_config
    from serve.bootstrap import build_service

    page = b"<!doctype html><title>published report</title><h1>gate passed</h1>"
    publish(s3_store, tiny_model_dir, "tiny-report", "v1", report_html=page)
    publish(s3_store, tiny_model_dir, "tiny-noreport", "v1")
    monkeypatch.setenv(StoreConfig().signing_key_env, SIGNING_KEY)
    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    handles = {}
    try:
        for name in ("tiny-report", "tiny-noreport"):
            config = write_config(tmp_path, name, s3_store, registry_poll_s=0, dashboard_path=str(tmp_path / "none"),
                                  moderation=blocklist_moderation(tmp_path / f"{name}.txt"))
            (tmp_path / f"{name}.txt").write_text("#\n")
            handles[name] = build_service(load_config(config), bind_host="127.0.0.1")
        resp = handles["tiny-report"].app.test_client().get("/dashboard")
        assert resp.status_code == 200 and resp.data == page
        assert resp.headers["X-Harmgate-Report-Source"].endswith("/models/tiny-report/v1/files/harmgate/report.html")

        missing = handles["tiny-noreport"].app.test_client().get("/dashboard")
        message = missing.get_json()["error"]["message"]
        assert missing.status_code == 404 and f"{tmp_path / 'none'} (no such file)" in message
        assert "not published with tiny-noreport:v1" in message

        # A bucket writer swaps the page: the service is already holding the verified copy...
        client = Registry(s3_store).objects.client
        client.put_object(Bucket=s3_store.bucket, Key="models/tiny-report/v1/files/harmgate/report.html",
                          Body=b"<script>x</script>")
        assert handles["tiny-report"].app.test_client().get("/dashboard").data == page
        # ...and a fresh instance refuses the swapped one.
        handles["tiny-report"].close()
        handles["tiny-report"] = build_service(load_config(tmp_path / "tiny-report.yaml"), bind_host="127.0.0.1")
        swapped = handles["tiny-report"].app.test_client().get("/dashboard")
        assert swapped.status_code == 404 and "report.html sha256 mismatch" in swapped.get_json()["error"]["message"]
    finally:
        for handle in handles.values():
            handle.close()


# -- revocation and hot swap (in this order, last: they change what the module's server serves) ---------------
def test_revocation_stops_serving_with_503(service, s3_store):
    revoke(s3_store, NAME, "v1", "leaks secrets in test")
    # (a Response is falsy when not ok, hence the list)
    [ready] = wait_until(lambda: [r for r in [service.get("/readyz", key=None)] if r.status_code == 503], 15,
                         "503 after the revocation")
    assert "tiny-serve:v1 was revoked: leaks secrets in test" in ready.json()["reason"]
    resp = service.post(CHAT)
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert "was revoked: leaks secrets in test" in resp.json()["error"]["message"]
    assert service.get("/v1/models").status_code == 503
    assert service.get("/healthz", key=None).json()["ready"] is False  # alive, not ready
    assert "stopped serving: tiny-serve:v1 was revoked" in service.log.read_text()


def test_hot_swap_to_a_newly_approved_version(service, s3_store, tmp_path):
    from align.tiny import save_tiny_model

    publish(s3_store, save_tiny_model(tmp_path / "v2", seed=1), NAME, "v2")
    wait_until(lambda: service.get("/readyz", key=None).status_code == 200, 60, "v2 to be served")
    assert service.post(CHAT).json()["model"] == f"{NAME}:v2"

    # v3 arrives while clients keep calling: every request is answered, by v2 or v3, never 503.
    statuses, models, stop = [], set(), threading.Event()

    def client() -> None:
        while not stop.is_set():
            r = service.post({**CHAT, "max_tokens": 2})
            statuses.append(r.status_code)
            if r.ok:
                models.add(r.json()["model"])

    worker = threading.Thread(target=client)
    worker.start()
    try:
        publish(s3_store, save_tiny_model(tmp_path / "v3", seed=2), NAME, "v3")
        wait_until(lambda: service.get("/healthz", key=None).json()["version"] == "v3", 60, "v3 to be served")
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert statuses and set(statuses) == {200}, statuses
    assert f"{NAME}:v3" in models
    log = service.log.read_text()
    assert "now serving tiny-serve:v3" in log and "replacing tiny-serve:v2" in log
    assert service.metric('harmgate_model_events_total{event="loaded"}') == 2


# -- the default scorer: evals.toxicity_scorer through the real Detoxify loader --------------------------------
@pytest.fixture(scope="module")
def detoxify_checkpoint(tmp_path_factory, tiny_bert_dir) -> Path:
    """A Detoxify-format checkpoint of a 2-layer random BERT (the format `harmgate scorer train` writes)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from evals.scorers.detoxify_scorer import checkpoint_dict

    folder = tmp_path_factory.mktemp("detoxify")
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    torch.manual_seed(0)
    cfg = BertConfig.from_pretrained(tiny_bert_dir, num_labels=1)
    (folder / "hf").mkdir()
    cfg.save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    torch.save(checkpoint_dict(BertForSequenceClassification(cfg).state_dict(), classes=["toxicity"],
                               model_type=str(folder / "hf")), folder / "detoxify.ckpt")
    return folder / "detoxify.ckpt"


@pytest.mark.parametrize("threshold, flagged", [(0.0, True), (1.0, False)])
def test_default_scorer_is_the_configured_detoxify_model(s3_store, tiny_model_dir, detoxify_checkpoint, tmp_path,
                                                          monkeypatch, threshold, flagged):
    from harmgate.config import load_config
    from serve.bootstrap import build_service

    name = f"tiny-detox-{'block' if flagged else 'pass'}"
    publish(s3_store, tiny_model_dir, name, "v1")
    path = write_config(tmp_path, name, s3_store, registry_poll_s=0,
                        moderation={"scorer": "default", "threshold": threshold, "refusal": REFUSAL})
    data = yaml.safe_load(path.read_text())
    data["evals"]["toxicity_scorer"] = {"checkpoint": str(detoxify_checkpoint)}
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(StoreConfig().signing_key_env, SIGNING_KEY)
    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    handle = build_service(load_config(path), bind_host="127.0.0.1")
    try:
        resp = handle.app.test_client().post("/v1/chat/completions", json=CHAT)
        choice = resp.get_json()["choices"][0]
        assert choice["moderation"]["scorer"].startswith("detoxify:") and choice["moderation"]["flagged"] is flagged
        assert 0.0 < choice["moderation"]["score"] < 1.0  # a random BERT's sigmoid: really scored
        assert (choice["message"]["content"] == REFUSAL) is flagged
    finally:
        handle.close()


def test_stream_blocked_mid_reply_stops_generation(s3_store, tiny_model_dir, tmp_path, monkeypatch):
    """A long reply (released in pieces) whose end is blocked: the pieces sent never hold the term, generation is
    cancelled, the refusal closes the stream. In-process (Flask's client), since the module's server caps replies
    at 12 tokens, too short to be released in pieces."""
    from harmgate.config import load_config
    from serve.bootstrap import build_service
    from serve.moderation import Moderator

    publish(s3_store, tiny_model_dir, "tiny-midstream", "v1")
    terms = tmp_path / "terms.txt"
    terms.write_text("# none yet\n")
    config = load_config(write_config(tmp_path, "tiny-midstream", s3_store, registry_poll_s=0, max_new_tokens=400,
                                      moderation=blocklist_moderation(terms)))
    monkeypatch.setenv(StoreConfig().signing_key_env, SIGNING_KEY)
    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)
    handle = build_service(config, bind_host="127.0.0.1")
    client = handle.app.test_client()
    body = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 400}
    try:
        full = client.post("/v1/chat/completions", json=body).get_json()
        text, total_tokens = full["choices"][0]["message"]["content"], full["usage"]["completion_tokens"]
        # Where would the stream release text (nothing blocked)? Block a word first seen between the first and
        # second release points: the second check then fails while tokens are still being generated.
        gate = Moderator(handle.runtime.moderator.scorer, config.service.moderation).gate()
        ends = [gate.released for end in range(1, len(text)) if gate.update(text[:end], final=False)[0]]
        assert len(ends) >= 2, f"the reply is not released in pieces: {text!r}"
        before = text[:ends[0]].lower()
        words = [w for w in re.findall(r"[A-Za-z]{3,}", text[ends[0]:ends[1]]) if w.lower() not in before]
        assert words, f"no word to block between {ends[:2]} in {text!r}"
        terms.write_text(words[0] + "\n")

        resp = client.post("/v1/chat/completions", json={**body, "stream": True,
                                                         "stream_options": {"include_usage": True}})
        events = [line[len(b"data: "):] for line in b"".join(resp.response).split(b"\n\n") if line]
        chunks = [json.loads(e) for e in events[:-1]]
        deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
        released = "".join(deltas[:-1])
        assert events[-1] == b"[DONE]" and deltas[-1] == REFUSAL
        assert released and text.startswith(released) and words[0].lower() not in released.lower()
        assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter"
        assert chunks[-1]["usage"]["completion_tokens"] < total_tokens, "generation went on after the block"
    finally:
        handle.close()


# -- refusing to start ---------------------------------------------------------------------------------------
def _one_refusal_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("harmgate.serve: refusing to start: ")
    return lines[0]


def test_refuses_to_start_when_nothing_is_approved(s3_store, tmp_path):
    line = _one_refusal_line(run_refusing(write_config(tmp_path, "never-published", s3_store)))
    assert "no approved, unrevoked version of never-published" in line


def test_refuses_to_start_on_tampered_weights(s3_store, tiny_model_dir, tmp_path):
    publish(s3_store, tiny_model_dir, "tiny-tampered", "v1")
    client, key = Registry(s3_store).objects.client, "models/tiny-tampered/v1/files/model.safetensors"
    data = bytearray(client.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read())
    data[-10] ^= 0xFF
    client.put_object(Bucket=s3_store.bucket, Key=key, Body=bytes(data))

    line = _one_refusal_line(run_refusing(write_config(tmp_path, "tiny-tampered", s3_store)))
    assert "model.safetensors sha256 mismatch" in line
    assert not (tmp_path / "cache" / "tiny-tampered" / "v1").exists()


# The remaining refusals run serve_main in this process (same code, no torch import: they stop before the model).
@pytest.fixture()
def refusal(monkeypatch, caplog):
    monkeypatch.setenv(StoreConfig().signing_key_env, SIGNING_KEY)
    monkeypatch.delenv("HARMGATE_API_KEYS", raising=False)

    def run(config: Path, **kw) -> str:
        from serve.runner import serve_main

        caplog.clear()
        with caplog.at_level("INFO", logger="harmgate.serve"):
            assert serve_main(str(config), port=free_port(), **kw) == 2
        lines = [r.getMessage() for r in caplog.records if "refusing to start" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith("refusing to start: "), caplog.text
        return lines[0]
    return run


def test_refuses_to_start_on_a_pinned_revoked_or_unknown_version(s3_store, tiny_model_dir, tmp_path, refusal):
    publish(s3_store, tiny_model_dir, "tiny-pinned", "v1")
    revoke(s3_store, "tiny-pinned", "v1", "bad")
    line = refusal(write_config(tmp_path, "tiny-pinned", s3_store, version="v1"))
    assert "tiny-pinned:v1 refused by the revocation check: revoked at" in line and line.endswith(": bad")
    assert "tiny-pinned:v999 not found" in refusal(write_config(tmp_path, "tiny-pinned", s3_store, version="v999"))


def test_refuses_to_start_when_the_store_stays_unreachable(tmp_path, refusal, monkeypatch, caplog):
    monkeypatch.setenv("HARMGATE_S3_ACCESS_KEY", "k" * 16)
    monkeypatch.setenv("HARMGATE_S3_SECRET_KEY", "s" * 16)
    store = StoreConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    started = time.monotonic()
    line = refusal(write_config(tmp_path, "tiny-nostore", store, store_wait_s=2))
    assert "unreachable" in line and "still unreachable after 2 s" in line
    assert "retrying for up to" in caplog.text
    assert 2 <= time.monotonic() - started < 30


def test_refuses_to_start_on_bad_keys_or_an_open_public_bind(s3_store, tmp_path, refusal, monkeypatch):
    config = write_config(tmp_path, "tiny-keys", s3_store)
    line = refusal(config, host="0.0.0.0")
    assert "no API keys configured and the service would listen on 0.0.0.0" in line
    monkeypatch.setenv("HARMGATE_API_KEYS", "short")
    assert "API key in $HARMGATE_API_KEYS is shorter than 16 characters" in refusal(config)
    monkeypatch.delenv("HARMGATE_API_KEYS")
    keys = tmp_path / "keys.txt"
    keys.write_text("# ops keys\n" + "k" * 32 + "\n\nshort\n")
    line = refusal(write_config(tmp_path, "tiny-keys", s3_store, api_keys_file=str(keys)))
    assert f"API key in {keys}:4 is shorter than 16 characters" in line
    line = refusal(write_config(tmp_path, "tiny-keys", s3_store, api_keys_file=str(tmp_path / "nokeys")))
    assert "cannot read service.api_keys_file" in line


def test_refuses_to_start_without_a_moderation_scorer(s3_store, tiny_model_dir, tmp_path, refusal):
    publish(s3_store, tiny_model_dir, "tiny-nomod", "v1")
    line = refusal(write_config(tmp_path, "tiny-nomod", s3_store,
                                moderation=blocklist_moderation(tmp_path / "missing.txt")))
    assert "cannot load moderation scorer 'serve.blocklist:BlocklistScorer'" in line and "missing.txt" in line
    line = refusal(write_config(tmp_path, "tiny-nomod", s3_store, moderation={"scorer": "no_such_module:make"}))
    assert "cannot load moderation scorer 'no_such_module:make': ModuleNotFoundError" in line
    line = refusal(write_config(tmp_path, "tiny-nomod", s3_store, moderation={"scorer": "json:dumps"}))
    assert "cannot load moderation scorer 'json:dumps'" in line


def test_refuses_to_start_on_a_bad_config(tmp_path, refusal):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nservice: {moderation: {treshold: 0.2}}\n")
    assert "service.moderation.treshold: unknown key (did you mean 'threshold'?)" in refusal(path)
