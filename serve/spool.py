"""A write-ahead spool: records are made durable on local disk first, then uploaded to S3 in batches.

Layout under ``spool_dir``, one folder per (model, version, kind), kind = ``completions`` | ``feedback``::

    <name>/<version>/<kind>/open-<pid>-<rand>.jsonl      the segment this process appends to (flock held)
    <name>/<version>/<kind>/<UTC time>-<pid>-<rand>.jsonl  sealed: complete, waiting for upload

``append`` writes one JSON line and fsyncs before it returns, so a record the service acknowledged survives a
crash or a kill. A flush (every ``flush_interval_s``, at ``flush_records`` waiting records, and on ``close``)
renames the open segment to a sealed one and uploads every sealed segment to
``<prefix>/<name>/<version>/<kind>/<sealed name>`` (harmgate/records.py) with If-None-Match (an upload repeated after a crash finds its
own object and is not duplicated), then deletes the local file. An unreachable store leaves the sealed files for
the next flush. On start, ``recover`` seals the open segments of processes that died (their flock is free) and
uploads them: no acknowledged record is lost on restart. Several worker processes can share one spool folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator

from harmgate.records import object_prefix, parse_lines
from harmgate.objectstore import ObjectExists, ObjectStore, RegistryError

log = logging.getLogger("harmgate.serve")
OPEN_PREFIX = "open-"


@dataclass
class _Segment:
    path: Path
    handle: IO[bytes]
    records: int = 0
    opened_at: float = field(default_factory=time.monotonic)


class Spool:
    def __init__(self, root: str | Path, objects: ObjectStore, store_prefix: str, *, flush_records: int = 100,
                 flush_interval_s: float = 10.0) -> None:
        self.root = Path(root)
        self.objects = objects
        self.store_prefix = store_prefix
        self.flush_records = flush_records
        self.flush_interval_s = flush_interval_s
        self._open: dict[tuple[str, str, str], _Segment] = {}
        self._lock = threading.Lock()          # the open segments
        self._upload_lock = threading.Lock()   # one uploader at a time in this process
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store_down = False
        self.root.mkdir(parents=True, exist_ok=True)

    # -- writing -------------------------------------------------------------------------------------
    def _folder(self, name: str, version: str, kind: str) -> Path:
        object_prefix(self.store_prefix, name, version, kind)  # validates kind
        return self.root / name / version / kind

    def append(self, name: str, version: str, kind: str, record: dict[str, Any]) -> None:
        """Durable on return (written and fsynced); uploaded with the next batch."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            seg = self._open.get((name, version, kind))
            if seg is None:
                seg = self._open[(name, version, kind)] = self._new_segment(self._folder(name, version, kind))
            seg.handle.write(line)
            seg.handle.flush()
            os.fsync(seg.handle.fileno())
            seg.records += 1
            full = seg.records >= self.flush_records
        if full:
            self._wake.set()

    @staticmethod
    def _new_segment(folder: Path) -> _Segment:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{OPEN_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.jsonl"
        handle = open(path, "ab")  # noqa: SIM115 - kept open while this process appends
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # "alive": recover() leaves it alone
        return _Segment(path, handle)

    @staticmethod
    def _sealed_name() -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{stamp}-{os.getpid()}-{secrets.token_hex(6)}.jsonl"

    def _seal(self, seg: _Segment) -> None:
        sealed = seg.path.with_name(self._sealed_name())
        os.replace(seg.path, sealed)  # while the lock is held: nobody else seals it too
        seg.handle.close()

    def seal_open(self, *, older_than_s: float = 0.0) -> None:
        """Seal this process's open segments (those open at least ``older_than_s``, or holding a full batch)."""
        now = time.monotonic()
        with self._lock:
            for key, seg in list(self._open.items()):
                if seg.records and (seg.records >= self.flush_records or now - seg.opened_at >= older_than_s):
                    self._seal(seg)
                    del self._open[key]

    def recover(self) -> int:
        """Seal the open segments of dead processes (flock free) in the whole spool; returns how many."""
        mine = {seg.path for seg in self._open.values()}
        count = 0
        for path in sorted(self.root.glob(f"*/*/*/{OPEN_PREFIX}*.jsonl")):
            if path in mine:
                continue
            try:
                with open(path, "ab") as handle:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if path.stat().st_size == 0:
                        path.unlink()
                        continue
                    os.replace(path, path.with_name(self._sealed_name()))
                    count += 1
            except BlockingIOError:
                continue  # a live process owns it
            except FileNotFoundError:
                continue  # another process recovered it first
        if count:
            log.info("spool: recovered %d segment(s) left by stopped processes", count)
        return count

    # -- uploading -----------------------------------------------------------------------------------
    def sealed(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*/*/*/*.jsonl") if not p.name.startswith(OPEN_PREFIX))

    def upload_sealed(self) -> int:
        """Upload every sealed segment; returns the records uploaded. Failures leave files for the next try."""
        uploaded = 0
        with self._upload_lock:
            for path in self.sealed():
                kind, version, name = path.parent.name, path.parent.parent.name, path.parent.parent.parent.name
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue  # another worker uploaded and removed it
                records = parse_lines(data, str(path))
                if not records:
                    path.unlink(missing_ok=True)
                    continue
                body = b"".join((json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
                                for r in records)
                key = object_prefix(self.store_prefix, name, version, kind) + path.name
                try:
                    self.objects.put_bytes(key, body, create_only=True, content_type="application/x-ndjson")
                except ObjectExists:
                    pass  # uploaded before a crash that kept the local file: the object is this segment
                except RegistryError as err:
                    if not self._store_down:
                        log.warning("spool: upload of %s failed, kept for the next flush: %s", path.name, err)
                        self._store_down = True
                    return uploaded
                if self._store_down:
                    log.info("spool: store reachable again")
                    self._store_down = False
                path.unlink(missing_ok=True)
                uploaded += len(records)
        return uploaded

    def flush(self) -> int:
        self.seal_open()
        return self.upload_sealed()

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover what stopped processes left, then flush in the background."""
        self.recover()
        self.upload_sealed()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-flusher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=min(self.flush_interval_s, 1.0))
            self._wake.clear()
            try:
                self.seal_open(older_than_s=self.flush_interval_s)
                self.upload_sealed()
            except Exception:  # noqa: BLE001 - the flusher must outlive any one bad segment
                log.exception("spool: flush failed")

    def close(self) -> int:
        """Stop the flusher and upload everything (what cannot be uploaded stays on disk for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.flush()

    # -- reading -------------------------------------------------------------------------------------
    def local_records(self, name: str, kind: str) -> Iterator[dict[str, Any]]:
        """Records on this machine not yet uploaded (any version, any process), newest segments first."""
        paths = sorted(self.root.glob(f"{name}/*/{kind}/*.jsonl"), key=lambda p: p.stat().st_mtime
                       if p.exists() else 0, reverse=True)
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            yield from parse_lines(data, str(path))
