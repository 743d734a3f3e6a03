"""Registry polling: hot swap to a newly approved version, withdraw a revoked one.

Every ``registry_poll_s`` seconds (one background thread per process):

1. If the served version is revoked, its signature no longer verifies (or its key was retired past its grace
   date), or it vanished from the registry, it is withdrawn at once: requests get 503 with the reason,
   in-flight ones are cancelled.
2. The target is the pinned version, or else the newest approved, unrevoked one. If that is not what is served,
   it is downloaded, verified (every sha256 and the signature, as at startup) and loaded *in this thread* while
   the current version keeps answering, then installed in one step.
3. The served version's objects in the bucket are compared with the verified cached copy
   (``Registry.bucket_drift``); a difference is logged as a warning on every tick (the cached copy still
   matches the signed statement, so it stays served).

Revocations come from the signed revocation list, as ``Registry.revocation_state`` accepts it for this node's
cache: a replayed older list or a deleted one leaves the newest accepted list in force (and is logged), a
version once seen revoked stays refused, and a node that never accepted a list serves nothing (fail closed).
A version refused by a check (signature, manifest digest, unknown/retired key, legacy HMAC approval) is
logged once per state, naming the check, and never loaded.

If the store cannot be reached, nothing changes: the current version keeps being served (it was verified when
loaded), the failure is logged once per outage and counted. A version that fails to load is not retried until
the registry lists it differently (e.g. re-signed), so a bad upload does not cause a reload loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gates.registry import ApprovedModel, Registry, RegistryError
from serve.metrics import Metrics
from serve.slot import ModelSlot, Served

log = logging.getLogger("harmgate.serve")


def unservable(row: dict[str, Any] | None) -> str | None:
    """Why a listed version must not be served (None: it may)."""
    if row is None:
        return "is no longer in the registry"
    if not row.get("revocations_usable", True):
        return f"cannot be checked against the revocation list (revocation check): {row.get('revocation_problem')}"
    if row.get("revoked"):
        return f"was revoked: {row.get('revoked_reason') or 'no reason given'}"
    if not row.get("approved"):
        return f"is no longer approved (signature {row.get('signature')}; {row.get('check')} check: {row.get('problem')})"
    return None


def refusal_line(name: str, row: dict[str, Any]) -> str:
    """The log line for a version a check refused: which check, and why."""
    return f"refusing {name}:{row['version']} ({row.get('check')} check): {row.get('problem')}; never served"


class RegistryWatcher:
    def __init__(self, *, registry: Registry, name: str, pinned: str | None, cache_dir: Path, slot: ModelSlot,
                 load: Callable[[ApprovedModel], Served], interval_s: float, metrics: Metrics) -> None:
        self.registry = registry
        self.name = name
        self.pinned = pinned
        self.cache_dir = Path(cache_dir)
        self.slot = slot
        self.load = load
        self.interval_s = interval_s
        self.metrics = metrics
        self._failed: dict[str, str] = {}  # version -> the listing row it failed with (as text)
        self._warned: set[tuple[str, str]] = set()  # (version, signature state) already logged
        self._revocation_problem: str | None = None
        self._store_down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="registry-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a poll bug must not kill the thread that enforces revocation
                log.exception("registry poll failed unexpectedly")
                self.metrics.registry_poll_errors.inc()

    def poll_once(self) -> None:
        try:
            rows = {r["version"]: r for r in self.registry.list_versions(self.name, self.cache_dir)}  # oldest first
        except RegistryError as err:
            self.metrics.registry_poll_errors.inc()
            if not self._store_down:
                served, _ = self.slot.get()
                log.warning("registry check failed (%s); still serving %s", err,
                            served.label if served else "nothing")
                self._store_down = True
            return
        if self._store_down:
            log.info("registry reachable again")
            self._store_down = False

        self._log_refusals(rows)
        servable = [v for v, row in rows.items() if self._unservable(v, row) is None]
        target = self.pinned or (servable[-1] if servable else None)
        served, _ = self.slot.get()
        if served is not None and (problem := self._unservable(served.version, rows.get(served.version))):
            reason = f"{served.label} {problem}"
            self.slot.withdraw(reason)
            self.metrics.model_events.labels("withdrawn").inc()
            self.metrics.model_ready.set(0)
            self.metrics.model_info.labels(served.model.name, served.version, served.model.manifest_sha256).set(0)
            log.error("stopped serving: %s", reason)
            served = None
        if target is None or (self.pinned and self._unservable(target, rows.get(target))):
            if served is None:
                self.slot.set_reason(self._nothing_to_serve(rows))
            return
        if served is not None and served.version == target:
            self.check_bucket(served.model)
            return
        stamp = repr(sorted(rows.get(target, {}).items()))
        if self._failed.get(target) == stamp:
            return
        try:
            model = self.registry.fetch_verified(self.name, target, self.cache_dir)
            new = self.load(model)
        except (RegistryError, OSError, ValueError, RuntimeError) as err:
            self._failed[target] = stamp
            self.metrics.model_events.labels("load_failed").inc()
            log.error("not switching to %s:%s: %s", self.name, target, err)
            return
        old = self.slot.install(new)
        self.metrics.model_events.labels("loaded").inc()
        self.metrics.model_ready.set(1)
        if old is not None:
            self.metrics.model_info.labels(old.model.name, old.version, old.model.manifest_sha256).set(0)
        self.metrics.model_info.labels(model.name, model.version, model.manifest_sha256).set(1)
        log.info("now serving %s (manifest sha256 %s)%s", new.label, model.manifest_sha256,
                 f", replacing {old.label}" if old else "")

    def _unservable(self, version: str, row: dict[str, Any] | None) -> str | None:
        return unservable(row)

    def _log_refusals(self, rows: dict[str, dict[str, Any]]) -> None:
        """Log a revocation-list problem once per problem, and each version a check refuses once per state."""
        problem = next((r.get("revocation_problem") for r in rows.values()), None)
        if problem and problem != self._revocation_problem:
            log.error("revocation check: %s", problem)
        self._revocation_problem = problem
        for version, row in rows.items():
            state = row.get("signature")
            if state not in ("valid", "unverified") and (version, state) not in self._warned:
                self._warned.add((version, state))
                if state == "missing":
                    log.info("ignoring %s:%s until it is signed (no model.sig: a publish not finished, or stopped "
                             "by a failure; rerunning it completes it)", self.name, version)
                else:
                    log.warning(refusal_line(self.name, row))

    def check_bucket(self, model: ApprovedModel) -> None:
        """Warn when the bucket no longer matches the verified cached copy being served."""
        try:
            drift = self.registry.bucket_drift(model)
        except RegistryError:
            return  # the store being down is reported by the poll itself
        if drift:
            self.metrics.model_events.labels("bucket_drift").inc()
            log.warning("bucket no longer matches the verified cached copy of %s:%s in %s: %s; still serving the "
                        "cached copy (it matches the signed statement); find out who wrote to the bucket",
                        model.name, model.version, model.local_dir, "; ".join(drift))

    def _nothing_to_serve(self, rows: dict[str, dict[str, Any]]) -> str:
        _, reason = self.slot.get()
        if self.pinned:
            return reason or f"pinned version {self.name}:{self.pinned} " \
                             f"{self._unservable(self.pinned, rows.get(self.pinned))}"
        return reason or f"no approved, unrevoked version of {self.name} in the registry"
