"""A token bucket per client: ``burst`` requests at once, refilled at ``per_minute`` a minute.

In-process state: under gunicorn each worker keeps its own buckets, so a client's effective limit is up to
``workers`` times the configured one (docs/FEEDBACK.md). Buckets that are full again are forgotten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead (a token was taken), else the seconds until one is available."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                self._forget_full(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        if len(self._buckets) < 10_000:
            return
        full = [c for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for c in full:
            del self._buckets[c]
