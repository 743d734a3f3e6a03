"""A blocklist scorer: 1.0 when a reply contains a listed term, else 0.0 (a ``TextScorer``).

Operators keep such lists next to a learned classifier (terms a model must never emit, leaked secrets,
internal code names); tests use it to make moderation decisions they can predict. Configure it with
``service.moderation.scorer: serve.blocklist:BlocklistScorer`` and ``scorer_args: {path: FILE}``. The file has
one term per line (``#`` comments); it is re-read when it changes, so terms can be added without a restart.
Matching is case-insensitive on plain substrings.
"""

from __future__ import annotations

import threading
from pathlib import Path


class BlocklistScorer:
    name = "blocklist"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"blocklist file {self.path} does not exist")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._terms: tuple[str, ...] = ()
        self._reload()

    def _reload(self) -> None:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp == self._stamp:
                return
            lines = self.path.read_text(encoding="utf-8").splitlines()
            self._terms = tuple(t.strip().lower() for t in lines if t.strip() and not t.lstrip().startswith("#"))
            self._stamp = stamp

    @property
    def terms(self) -> tuple[str, ...]:
        return self._terms

    def score(self, texts: list[str]) -> list[float]:
        self._reload()
        terms = self._terms
        return [1.0 if any(t in text.lower() for t in terms) else 0.0 for text in texts]
