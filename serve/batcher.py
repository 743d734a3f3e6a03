"""Dynamic batching: one thread owns the model and runs queued requests together.

Requests that arrive while a batch is generating wait and go together into the next one, up to
``max_batch_size`` whatever their sampling settings (serve/engine.py applies those per row); a lone request
waits at most ``wait_s`` for company.
On a CPU batching 8 requests costs little more time per step than one (the weights are read once per step for
the whole batch), which is where the throughput in docs/SERVICE.md comes from. The price: a request that
arrives just after a batch started waits for it to finish (static, not continuous, batching).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from serve.engine import CANCELLED, ERROR, Engine, SamplingParams, Ticket

log = logging.getLogger("harmgate.serve")


class QueueFull(RuntimeError):
    """More requests are waiting than the service accepts (429)."""


class BatcherClosed(RuntimeError):
    """This model is no longer served (swapped or withdrawn); ask the slot for the current one."""


class Batcher:
    def __init__(self, engine: Engine, *, max_batch_size: int, wait_s: float, max_queued: int,
                 on_batch: Callable[[int], None] | None = None, name: str = "model") -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_queued = max_queued
        self.on_batch = on_batch
        self._queue: queue.Queue[Ticket | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running: list[Ticket] = []
        self._closed = False
        self._cancel_reason: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> Ticket:
        ticket = Ticket(prompt_ids, params)
        with self._lock:
            if self._closed:
                raise BatcherClosed("this model version is no longer served")
            if self._waiting >= self.max_queued:
                raise QueueFull(f"{self._waiting} requests are already waiting (limit {self.max_queued})")
            self._waiting += 1
        self._queue.put(ticket)
        return ticket

    @property
    def waiting(self) -> int:
        return self._waiting

    def close(self, cancel_reason: str | None = None) -> None:
        """Accept nothing new. Without a reason, queued and running requests finish (a swap drains the old
        model); with one, they are cancelled with it (a revoked model stops at its next token)."""
        with self._lock:
            self._closed = True
            self._cancel_reason = cancel_reason
            running = list(self._running)
        if cancel_reason is not None:
            for t in running:
                t.cancel(cancel_reason)
        self._queue.put(None)  # wake the loop: it drains or cancels what is queued, then exits

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _cancel_waiting(self, reason: str) -> None:
        # Only the loop thread takes from the queue, so this runs there.
        waiting: list[Ticket] = []
        while True:
            try:
                t = self._queue.get_nowait()
            except queue.Empty:
                break
            if t is not None:
                waiting.append(t)
        for t in waiting:
            self._dequeued()
            t.cancel(reason)

    def _dequeued(self) -> None:
        with self._lock:
            self._waiting -= 1

    def _next(self, timeout: float | None) -> Ticket | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _collect(self, first: Ticket) -> list[Ticket]:
        batch = [first]
        deadline = time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                t = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if t is None:  # a close() wake-up; keep it for the loop
                self._queue.put(None)
                break
            batch.append(t)
        return batch

    def _loop(self) -> None:
        while True:
            if self._cancel_reason is not None:
                self._cancel_waiting(self._cancel_reason)
                return
            first = self._next(timeout=None)
            if first is None:
                if self._closed and self._queue.empty():
                    return
                continue
            batch = self._collect(first)
            for _ in batch:
                self._dequeued()
            live = [t for t in batch if not t.done]
            if not live:
                continue
            with self._lock:
                self._running = live
                reason = self._cancel_reason
            if reason is not None:  # close() came between taking these off the queue and now
                for t in live:
                    t.cancel(reason)
            if self.on_batch:
                self.on_batch(len(live))
            try:
                self.engine.run_batch(live)
            except Exception as err:  # noqa: BLE001 - the request threads report it; the loop must go on
                log.exception("generation failed for a batch of %d (%s)", len(live), type(err).__name__)
                for t in live:
                    t.finish(ERROR, err)
            finally:
                with self._lock:
                    self._running = []
                for t in live:
                    if not t.done:
                        t.finish(CANCELLED if t.cancel_reason else ERROR)
