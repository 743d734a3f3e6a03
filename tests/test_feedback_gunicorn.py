"""Feedback in the production process model: gunicorn (through the image's entrypoint) with two workers sharing one
spool folder. A completion recorded by another process on the machine is found in the shared spool, a live
process's open segment is left alone, and on SIGTERM every worker uploads what waits (the flush interval is an hour,
so only the shutdown flush can have done it)."""

from __future__ import annotations

import signal

import requests

from harmgate.records import object_prefix, parse_lines
from harmgate.objectstore import ObjectStore
from serve.completion_log import owner_id
from serve.spool import Spool
from tests.store_fixtures import free_port
from tests.test_serve import API_KEY, publish
from tests.test_serve_deploy import ENTRYPOINT, config_with_blocklist, entry_env, start_process

NAME = "tiny-fb-gunicorn"


def stored(store, kind: str) -> list[dict]:
    objects = ObjectStore(store)
    return [r for k in objects.list_keys(object_prefix(store.prefix, NAME, "v1", kind))
            for r in parse_lines(objects.get_bytes(k), k)]


def test_two_workers_share_the_spool_and_flush_on_sigterm(s3_store, tiny_model_dir, tmp_path):
    publish(s3_store, tiny_model_dir, NAME, "v1")
    spool_dir = tmp_path / "spool"
    config = config_with_blocklist(tmp_path, NAME, s3_store, workers=2, threads=4, registry_poll_s=0,
                                   feedback={"enabled": True, "spool_dir": str(spool_dir), "flush_interval_s": 3600,
                                             "flush_records": 1000})
    port = free_port()
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {API_KEY}"}
    proc = start_process(["bash", str(ENTRYPOINT), "serve"], tmp_path / "gunicorn.log",
                         entry_env(HARMGATE_CONFIG=str(config), HARMGATE_BIND=f"127.0.0.1:{port}",
                                   HARMGATE_API_KEYS=API_KEY), url)
    # Another process on this machine (a third worker, say) recorded a completion and is still running.
    other = Spool(spool_dir, ObjectStore(s3_store), s3_store.prefix)
    foreign = {"id": "chatcmpl-" + "c" * 32, "version": "v1", "owner": owner_id(f"Bearer {API_KEY}"),
               "messages": [{"role": "user", "content": "from another process"}], "reply": "hello", "moderated": False}
    other.append(NAME, "v1", "completions", foreign)
    try:
        ids = []
        for i in range(6):
            chat = requests.post(f"{url}/v1/chat/completions", headers=auth, timeout=120,
                                 json={"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 3})
            assert chat.status_code == 200, chat.text
            ids.append(chat.json()["id"])
        for cid in [*ids, foreign["id"]]:
            fb = requests.post(f"{url}/v1/feedback", headers=auth, timeout=60, json={"completion_id": cid,
                                                                                      "rating": "good"})
            assert fb.status_code == 201, fb.text
        assert stored(s3_store, "completions") == []  # nothing uploaded yet: an hour's interval, 1000-record batches
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    log = (tmp_path / "gunicorn.log").read_text()
    assert code == 0, log
    assert sorted(r["id"] for r in stored(s3_store, "completions")) == sorted(ids)  # not the live process's
    assert sorted(r["completion_id"] for r in stored(s3_store, "feedback")) == sorted([*ids, foreign["id"]])
    other.close()
    assert foreign["id"] in {r["id"] for r in stored(s3_store, "completions")}
