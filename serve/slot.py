"""The model version being served, swapped atomically.

A request takes the current ``Served`` once and uses that object to the end, so a swap never mixes two
versions inside one request. A swap lets the old version finish what it already accepted (its batcher
drains, then its thread ends and the model is freed); a withdrawal (revocation) cancels the old version's
requests at their next token, and until something valid is installed every request gets 503 with the reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from gates.registry import ApprovedModel
from serve.batcher import Batcher
from serve.engine import Engine


@dataclass
class Served:
    model: ApprovedModel
    engine: Engine
    batcher: Batcher
    loaded_at: float = field(default_factory=time.time)

    @property
    def label(self) -> str:
        return f"{self.model.name}:{self.model.version}"

    @property
    def version(self) -> str:
        return self.model.version


class ModelSlot:
    def __init__(self, reason: str = "starting: no model loaded yet") -> None:
        self._lock = threading.Lock()
        self._served: Served | None = None
        self._reason = reason

    def get(self) -> tuple[Served | None, str]:
        """(the served version or None, why nothing is served)."""
        with self._lock:
            return self._served, self._reason

    def install(self, served: Served) -> Served | None:
        with self._lock:
            old, self._served, self._reason = self._served, served, ""
        if old is not None:
            old.batcher.close()  # drain: what the old version accepted, it finishes
        return old

    def withdraw(self, reason: str) -> Served | None:
        with self._lock:
            old, self._served, self._reason = self._served, None, reason
        if old is not None:
            old.batcher.close(cancel_reason=reason)
        return old

    def set_reason(self, reason: str) -> None:
        with self._lock:
            if self._served is None:
                self._reason = reason
