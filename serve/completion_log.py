"""What the service issued: one record per completion (id, model version, the prompt messages, the reply the client
received), so that feedback can only be given on text the model really produced, and so that feedback can be
turned into training data later (align/feedback.py).

Records go through the spool (serve/spool.py) to ``<prefix>/<name>/<version>/completions/`` in S3. A lookup
checks, in order: this process's recent completions (in memory, ``feedback.memory_index`` of them), the
segments on local disk not yet uploaded (other workers' too), then the uploaded segments of every version of the
model, newest first. Only completions the service recorded are found; an id nobody issued is not.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from harmgate.objectstore import ObjectStore
from harmgate.records import model_prefix, object_prefix, parse_lines
from serve.spool import Spool

KIND = "completions"


def owner_id(authorization: str | None) -> str:
    """A stable, non-secret id of the bearer key that made a request (sha256 prefix), or 'anonymous'."""
    if not authorization or not authorization.startswith("Bearer "):
        return "anonymous"
    token = authorization[len("Bearer "):].strip()
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:16]


class CompletionLog:
    def __init__(self, spool: Spool, objects: ObjectStore, store_prefix: str, name: str, *,
                 memory_index: int = 100_000) -> None:
        self.spool = spool
        self.objects = objects
        self.store_prefix = store_prefix
        self.name = name
        self.memory_index = memory_index
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._loaded: set[str] = set()  # S3 segments already read into _recent
        self._lock = threading.Lock()

    def record(self, record: dict[str, Any]) -> None:
        """Durable on return: the client gets the completion id only after this."""
        self.spool.append(self.name, record["version"], KIND, record)
        self._remember(record)

    def _remember(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._recent[record["id"]] = record
            self._recent.move_to_end(record["id"])
            while len(self._recent) > self.memory_index:
                self._recent.popitem(last=False)

    def lookup(self, completion_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._recent.get(completion_id)
        if found is not None:
            return found
        for record in self.spool.local_records(self.name, KIND):
            if record.get("id") == completion_id:
                self._remember(record)
                return record
        return self._lookup_uploaded(completion_id)

    def _lookup_uploaded(self, completion_id: str) -> dict[str, Any] | None:
        """Read (once each) the uploaded segments this process has not seen, newest version and segment first.
        Raises RegistryError when the store cannot be read (the caller answers 503: it cannot tell)."""
        for version in sorted(self.objects.list_subprefixes(model_prefix(self.store_prefix, self.name)),
                              reverse=True):
            prefix = object_prefix(self.store_prefix, self.name, version, KIND)
            for key in sorted(self.objects.list_keys(prefix), reverse=True):
                if key in self._loaded:
                    continue
                hit = None
                for record in parse_lines(self.objects.get_bytes(key) or b"", key):
                    self._remember(record)
                    if record.get("id") == completion_id:
                        hit = record
                self._loaded.add(key)
                if hit is not None:
                    return hit
        return None
