"""`POST /v1/feedback` and the completion log, over real HTTP against the real app (a werkzeug server in a thread)
serving a published tiny model from a real SeaweedFS, with records going through the spool to that store."""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from harmgate.records import object_prefix, parse_lines
from gates.registry import Registry
from harmgate.config import StoreConfig, parse_config
from serve.completion_log import CompletionLog, owner_id
from serve.spool import Spool
from tests.store_fixtures import SIGNING_KEY, free_port

NAME = "tiny-feedback"
KEY_A, KEY_B, KEY_RL = ("fb-key-a-" + secrets.token_hex(12), "fb-key-b-" + secrets.token_hex(12),
                        "fb-key-rl-" + secrets.token_hex(12))
PASSED = {"passed": True, "kpis": []}
REFUSAL = "Sorry, I will not say that."


@dataclass
class Live:
    url: str
    handle: object
    store: StoreConfig
    blocklist: Path
    spool_dir: Path

    def chat(self, content: str, *, key: str = KEY_A, **extra) -> requests.Response:
        return requests.post(f"{self.url}/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                             json={"messages": [{"role": "user", "content": content}], "max_tokens": 6, **extra})

    def feedback(self, body, *, key: str | None = KEY_A, raw: bytes | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if raw is not None:
            return requests.post(f"{self.url}/v1/feedback", data=raw, headers=headers, timeout=30)
        return requests.post(f"{self.url}/v1/feedback", json=body, headers=headers, timeout=30)

    def stored(self, kind: str) -> list[dict]:
        """Every record of ``kind`` in the bucket, after uploading what waits in the spool."""
        self.handle.runtime.feedback.spool.flush()
        objects = Registry(self.store).objects
        records = []
        for key in objects.list_keys(object_prefix(self.store.prefix, NAME, "v1", kind)):
            records += parse_lines(objects.get_bytes(key), key)
        return records


@pytest.fixture(scope="module")
def live(s3_store, tiny_model_dir, tmp_path_factory) -> Iterator[Live]:
    from werkzeug.serving import make_server

    from serve.blocklist import BlocklistScorer
    from serve.bootstrap import build_service

    tmp = tmp_path_factory.mktemp("feedback")
    saved = {k: os.environ.get(k) for k in (s3_store.signing_key_env, "HARMGATE_API_KEYS")}
    os.environ[s3_store.signing_key_env] = SIGNING_KEY
    os.environ["HARMGATE_API_KEYS"] = ",".join((KEY_A, KEY_B, KEY_RL))
    Registry(s3_store).publish(NAME, tiny_model_dir, verdict=PASSED, metrics={}, config={}, provenance={},
                               base_model="harmgate/tiny-random-llama", version="v1")
    blocklist = tmp / "blocklist.txt"
    blocklist.write_text("# nothing blocked yet\n")
    config = parse_config({
        "name": NAME, "model": {"base": "harmgate/tiny-random-llama"},
        "data": {"sources": [{"id": "x", "format": "hh"}]}, "evals": {"suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "k", "metric": "advbench_refusal.compliance_rate", "direction": "lower",
                             "max": 1}]},
        "store": s3_store.model_dump(),
        "service": {"cache_dir": str(tmp / "cache"), "max_new_tokens": 8, "registry_poll_s": 0,
                    "moderation": {"scorer": "serve.blocklist:BlocklistScorer", "refusal": REFUSAL},
                    "feedback": {"enabled": True, "spool_dir": str(tmp / "spool"), "flush_interval_s": 3600,
                                 "flush_records": 1000, "rate_limit_per_minute": 1200, "rate_limit_burst": 20,
                                 "max_comment_chars": 50}},
    })
    handle = build_service(config, bind_host="127.0.0.1", scorer=BlocklistScorer(blocklist))
    handle.start_background()
    port = free_port()
    server = make_server("127.0.0.1", port, handle.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Live(f"http://127.0.0.1:{port}", handle, s3_store, blocklist, tmp / "spool")
    finally:
        server.shutdown()
        handle.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_rating_of_a_returned_completion_is_stored_under_its_version(live):
    chat = live.chat("Tell me about rivers")
    assert chat.status_code == 200, chat.text
    body = chat.json()
    rid, reply = body["id"], body["choices"][0]["message"]["content"]

    resp = live.feedback({"completion_id": rid, "rating": "bad", "category": "unhelpful", "comment": "too short"})
    assert resp.status_code == 201, resp.text
    fb = resp.json()
    assert fb["object"] == "feedback" and fb["id"].startswith("fb-") and fb["model"] == f"{NAME}:v1"
    assert fb["completion_id"] == rid and fb["rating"] == "bad" and fb["category"] == "unhelpful"

    completion = next(r for r in live.stored("completions") if r["id"] == rid)
    assert completion["messages"] == [{"role": "user", "content": "Tell me about rivers"}]
    assert completion["reply"] == reply and completion["version"] == "v1" and completion["moderated"] is False
    assert completion["owner"] == owner_id(f"Bearer {KEY_A}") and completion["usage"]["completion_tokens"] > 0
    stored = next(r for r in live.stored("feedback") if r["id"] == fb["id"])
    assert stored["completion_id"] == rid and stored["rating"] == "bad" and stored["comment"] == "too short"
    assert stored["version"] == "v1" and stored["owner"] == completion["owner"]
    objects = Registry(live.store).objects
    everything = b"".join(objects.get_bytes(k) for k in objects.list_keys(f"{live.store.prefix}/{NAME}/v1/"))
    assert KEY_A.encode() not in everything, "the API key itself must never be stored"


def test_a_streamed_completion_can_be_rated_after_it_ends(live):
    resp = live.chat("Stream me a story", stream=True)
    assert resp.status_code == 200
    chunks = [json.loads(line[6:]) for line in resp.iter_lines(decode_unicode=True)
              if line.startswith("data: {")]
    rid = chunks[0]["id"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
    assert live.feedback({"completion_id": rid, "rating": "good"}).status_code == 201
    record = next(r for r in live.stored("completions") if r["id"] == rid)
    assert record["reply"] == text and record["finish_reason"] in ("stop", "length")


def test_a_moderated_reply_is_recorded_as_the_refusal_the_client_saw(live):
    first = live.chat("Name a colour").json()["choices"][0]["message"]["content"]
    word = next(w for w in first.split() if len(w) >= 2) if first.split() else None
    if not word:
        pytest.skip(f"the tiny model replied {first!r}: no word to block")
    live.blocklist.write_text(f"{word}\n")
    try:
        blocked = live.chat("Name a colour").json()
    finally:
        live.blocklist.write_text("# nothing blocked\n")
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    record = next(r for r in live.stored("completions") if r["id"] == blocked["id"])
    assert record["reply"] == REFUSAL and record["moderated"] is True


@pytest.mark.parametrize("body, status, param", [
    ({"completion_id": "chatcmpl-" + "0" * 32, "rating": "good"}, 404, "completion_id"),  # never issued
    ({"completion_id": "chatcmpl-nope", "rating": "good"}, 400, "completion_id"),
    ({"rating": "good"}, 400, "completion_id"),
    ({"completion_id": "COMPLETION", "rating": "meh"}, 400, "rating"),
    ({"completion_id": "COMPLETION", "rating": "bad", "category": "boring"}, 400, "category"),
    ({"completion_id": "COMPLETION", "rating": "bad", "comment": "x" * 51}, 400, "comment"),
    ({"completion_id": "COMPLETION", "rating": "bad", "reply": "text the model never wrote"}, 400, "reply"),
    ({"completion_id": "COMPLETION", "rating": True}, 400, "rating"),
    ({"completion_id": "COMPLETION", "rating": "bad", "comment": "half a pair \ud800"}, 400, "comment"),
])
def test_feedback_is_validated(live, body, status, param):
    rid = live.chat("Validate me").json()["id"]
    body = {k: (rid if v == "COMPLETION" else v) for k, v in body.items()}
    resp = live.feedback(body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["param"] == param


def test_only_the_key_that_got_the_completion_may_rate_it(live):
    rid = live.chat("Mine, not yours").json()["id"]
    other = live.feedback({"completion_id": rid, "rating": "bad"}, key=KEY_B)
    assert other.status_code == 404 and "not returned to this API key" in other.json()["error"]["message"]
    assert live.feedback({"completion_id": rid, "rating": "bad"}, key=None).status_code == 401
    assert live.feedback(None, raw=b"{not json").status_code == 400
    assert live.feedback({"completion_id": rid, "rating": "bad"}).status_code == 201


def test_feedback_is_rate_limited_per_key(live):
    rid = live.chat("Rate limit me", key=KEY_RL).json()["id"]
    codes = [live.feedback({"completion_id": rid, "rating": "good"}, key=KEY_RL) for _ in range(30)]
    statuses = [r.status_code for r in codes]
    assert statuses[:20] == [201] * 20 and 429 in statuses[20:], statuses
    limited = next(r for r in codes if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and limited.json()["error"]["type"] == "rate_limit_error"
    rid_a = live.chat("Other keys are not affected").json()["id"]
    assert live.feedback({"completion_id": rid_a, "rating": "good"}).status_code == 201


def test_a_fresh_process_finds_uploaded_completions_in_the_store(live, tmp_path):
    rid = live.chat("Remember me").json()["id"]
    live.handle.runtime.feedback.spool.flush()
    registry = Registry(live.store)
    fresh = CompletionLog(Spool(tmp_path / "empty-spool", registry.objects, registry.prefix), registry.objects,
                          registry.prefix, NAME)
    found = fresh.lookup(rid)
    assert found is not None and found["messages"][0]["content"] == "Remember me"
    assert fresh.lookup("chatcmpl-" + "f" * 32) is None


def test_the_openapi_document_describes_the_feedback_route_when_it_is_on(live):
    from serve.openapi import FeedbackReceipt

    doc = requests.get(f"{live.url}/openapi.json", timeout=30).json()
    op = doc["paths"]["/v1/feedback"]["post"]
    assert op["security"] == [{"bearer": []}] and set(op["responses"]) == {"201", "400", "401", "404", "429", "503"}
    request_schema = doc["components"]["schemas"]["FeedbackRequest"]
    assert request_schema["additionalProperties"] is False and set(request_schema["required"]) == {"completion_id",
                                                                                                  "rating"}
    rid = live.chat("Document me").json()["id"]
    FeedbackReceipt.model_validate(live.feedback({"completion_id": rid, "rating": "good"}).json())
