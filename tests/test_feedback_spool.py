"""The spool under the completion log and the feedback store: fsynced before acknowledgement, uploaded in batches to a
real SeaweedFS, nothing lost when the writing process is killed (SIGKILL, no cleanup) or the store is down."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harmgate.records import object_prefix, parse_lines
from harmgate.objectstore import ObjectStore
from harmgate.config import StoreConfig
from serve.spool import Spool
from tests.store_fixtures import free_port

REPO = Path(__file__).resolve().parent.parent


def stored(store: StoreConfig, name: str, version: str, kind: str) -> list[dict]:
    objects = ObjectStore(store)
    out = []
    for key in sorted(objects.list_keys(object_prefix(store.prefix, name, version, kind))):
        out += parse_lines(objects.get_bytes(key), key)
    return out


def spool(store: StoreConfig, root: Path, **kw) -> Spool:
    return Spool(root, ObjectStore(store), store.prefix, **kw)


def unique() -> str:
    return "spool-" + secrets.token_hex(4)


def test_records_are_uploaded_in_batches_of_flush_records(s3_store, tmp_path):
    name = unique()
    s = spool(s3_store, tmp_path, flush_records=3, flush_interval_s=3600)
    s.start()
    try:
        for i in range(2):
            s.append(name, "v1", "feedback", {"id": f"r{i}"})
        time.sleep(1.5)
        assert stored(s3_store, name, "v1", "feedback") == []  # under the batch size, before the interval
        s.append(name, "v1", "feedback", {"id": "r2"})
        deadline = time.monotonic() + 10
        while not stored(s3_store, name, "v1", "feedback") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [r["id"] for r in stored(s3_store, name, "v1", "feedback")] == ["r0", "r1", "r2"]
        assert not list(tmp_path.rglob("*.jsonl")) or all(p.name.startswith("open-") for p in tmp_path.rglob("*.jsonl"))
    finally:
        s.close()


def test_close_uploads_what_waits_and_versions_and_kinds_stay_apart(s3_store, tmp_path):
    name = unique()
    s = spool(s3_store, tmp_path, flush_records=100, flush_interval_s=3600)
    s.append(name, "v1", "completions", {"id": "c1"})
    s.append(name, "v2", "completions", {"id": "c2"})
    s.append(name, "v2", "feedback", {"id": "f2"})
    assert s.close() == 3
    assert [r["id"] for r in stored(s3_store, name, "v1", "completions")] == ["c1"]
    assert [r["id"] for r in stored(s3_store, name, "v2", "completions")] == ["c2"]
    assert [r["id"] for r in stored(s3_store, name, "v2", "feedback")] == ["f2"]
    assert not list(tmp_path.rglob("*.jsonl")), "uploaded segments are removed locally"
    with pytest.raises(ValueError, match="unknown record kind"):
        s.append(name, "v1", "ratings", {"id": "x"})


WRITER = """
import os, signal, sys
from harmgate.objectstore import ObjectStore
from harmgate.config import StoreConfig
from serve.spool import Spool
store = StoreConfig.model_validate_json(sys.argv[1])
s = Spool(sys.argv[2], ObjectStore(store), store.prefix, flush_records=1000, flush_interval_s=3600)
for i in range(int(sys.argv[4])):
    s.append(sys.argv[3], "v1", "completions", {"id": f"c{i}", "reply": "x" * 100})
print("acknowledged", flush=True)
if sys.argv[5] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit, no flush: a crash
import time; time.sleep(60)
"""


def test_acknowledged_records_survive_a_killed_process_and_are_uploaded_on_restart(s3_store, tmp_path):
    name = unique()
    proc = subprocess.run([sys.executable, "-c", WRITER, s3_store.model_dump_json(), str(tmp_path), name, "25",
                           "kill"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9 and "acknowledged" in proc.stdout, proc.stderr
    assert stored(s3_store, name, "v1", "completions") == []  # nothing was uploaded before the crash
    [segment] = list(tmp_path.rglob("open-*.jsonl"))
    assert len(segment.read_text().splitlines()) == 25

    restarted = spool(s3_store, tmp_path)
    restarted.start()  # recover: seal the dead process's segment, upload it
    restarted.close()
    assert [r["id"] for r in stored(s3_store, name, "v1", "completions")] == [f"c{i}" for i in range(25)]
    assert not list(tmp_path.rglob("*.jsonl"))


def test_a_live_processs_open_segment_is_left_alone(s3_store, tmp_path):
    name = unique()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, s3_store.model_dump_json(), str(tmp_path), name, "3",
                             "live"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "acknowledged"
        other = spool(s3_store, tmp_path)
        assert other.recover() == 0 and other.flush() == 0
        assert len(list(tmp_path.rglob("open-*.jsonl"))) == 1 and stored(s3_store, name, "v1", "completions") == []
    finally:
        proc.kill()
        proc.wait()
    assert spool(s3_store, tmp_path).recover() == 1  # its owner is gone now


def test_a_store_outage_keeps_records_on_disk_until_it_is_back(s3_store, tmp_path):
    name = unique()
    down = s3_store.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1})
    s = spool(down, tmp_path)
    s.append(name, "v1", "feedback", {"id": "f1"})
    assert s.close() == 0  # the upload failed: the sealed segment stays
    [kept] = list(tmp_path.rglob("*.jsonl"))
    assert not kept.name.startswith("open-") and json.loads(kept.read_text())["id"] == "f1"
    back = spool(s3_store, tmp_path)
    back.start()
    back.close()
    assert [r["id"] for r in stored(s3_store, name, "v1", "feedback")] == ["f1"]


def test_an_upload_repeated_after_a_crash_is_not_duplicated(s3_store, tmp_path):
    name = unique()
    s = spool(s3_store, tmp_path)
    s.append(name, "v1", "feedback", {"id": "f1"})
    s.seal_open()
    [sealed] = list(tmp_path.rglob("*.jsonl"))
    content = sealed.read_bytes()
    assert s.upload_sealed() == 1
    sealed.write_bytes(content)  # the crash came after the upload, before the local delete
    assert s.upload_sealed() == 1 and not sealed.exists()
    keys = ObjectStore(s3_store).list_keys(object_prefix(s3_store.prefix, name, "v1", "feedback"))
    assert len(keys) == 1 and len(stored(s3_store, name, "v1", "feedback")) == 1


def test_a_torn_last_line_is_dropped_and_a_corrupt_middle_line_is_an_error():
    good = b'{"id": "a"}\n{"id": "b"}\n'
    assert [r["id"] for r in parse_lines(good + b'{"id": "c', "seg")] == ["a", "b"]
    with pytest.raises(ValueError, match="seg line 2 is not JSON"):
        parse_lines(b'{"id": "a"}\n{oops\n{"id": "b"}\n', "seg")
