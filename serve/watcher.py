"""Registry polling: hot swap to a newly approved version, withdraw a revoked one.

Every ``registry_poll_s`` seconds (one background thread per process):

1. If the served version is revoked, its approval no longer verifies, or it vanished from the registry, it is
   withdrawn at once: requests get 503 with the reason, in-flight ones are cancelled.
2. The target is the pinned version, or else the newest approved, unrevoked one. If that is not what is served,
   it is downloaded, verified (every sha256 and the signature, as at startup) and loaded *in this thread* while
   the current version keeps answering, then installed in one step.

A version seen revoked stays refused, even if its ``revoked.json`` later disappears (only a bucket writer can
delete it; the approval's HMAC does not cover revocation): remembered in ``<cache_dir>/<name>/.revoked.json``,
so restarts on the same cache remember it too. A version whose approval
does not verify (forged, or its manifest swapped) is logged once and never loaded.

If the store cannot be reached, nothing changes: the current version keeps being served (it was verified when
loaded), the failure is logged once per outage and counted. A version that fails to load is not retried until
the registry lists it differently (e.g. re-approved), so a bad upload does not cause a reload loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gates.registry import ApprovedModel, Registry, RegistryError, remember_revoked, revoked_in_cache
from serve.metrics import Metrics
from serve.slot import ModelSlot, Served

log = logging.getLogger("harmgate.serve")


def unservable(row: dict[str, Any] | None) -> str | None:
    """Why a listed version must not be served (None: it may)."""
    if row is None:
        return "is no longer in the registry"
    if row.get("revoked"):
        return f"was revoked: {row.get('revoked_reason') or 'no reason given'}"
    if not row.get("approved"):
        return f"is no longer approved (signature {row.get('signature')})"
    return None


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
        # version -> why: once revoked, always refused (also remembered in the cache folder, for restarts)
        self._revoked: dict[str, str] = {version: str(seen.get("reason"))
                                         for version, seen in revoked_in_cache(self.cache_dir, name).items()}
        self._warned: set[tuple[str, str]] = set()  # (version, signature state) already logged
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
            rows = {r["version"]: r for r in self.registry.list_versions(self.name)}  # oldest first
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

        self._remember(rows)
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
        if version in self._revoked:
            return f"was revoked: {self._revoked[version]}"
        return unservable(row)

    def _remember(self, rows: dict[str, dict[str, Any]]) -> None:
        """Make revocations sticky; log each version whose approval does not verify, once per state."""
        for version, row in rows.items():
            if row.get("revoked") and version not in self._revoked:
                self._revoked[version] = row.get("revoked_reason") or "no reason given"
                remember_revoked(self.cache_dir, self.name, version, self._revoked[version])
            elif not row.get("revoked") and version in self._revoked and (version, "unrevoked") not in self._warned:
                self._warned.add((version, "unrevoked"))
                log.error("refusing %s:%s: it was revoked (%s) and its revocation record has since disappeared "
                          "from the registry", self.name, version, self._revoked[version])
            state = row.get("signature")
            if state not in ("valid", "unverified") and (version, state) not in self._warned:
                self._warned.add((version, state))
                if state == "missing":
                    log.info("ignoring %s:%s until it is approved (no approval record: a publish not finished, "
                             "or stopped by a failure; rerunning it completes it)", self.name, version)
                else:
                    log.warning("ignoring %s:%s: its approval is %s (never served; a forged approval or a "
                                "manifest changed after approval reads as invalid)", self.name, version, state)

    def _nothing_to_serve(self, rows: dict[str, dict[str, Any]]) -> str:
        _, reason = self.slot.get()
        if self.pinned:
            return reason or f"pinned version {self.name}:{self.pinned} " \
                             f"{self._unservable(self.pinned, rows.get(self.pinned))}"
        return reason or f"no approved, unrevoked version of {self.name} in the registry"
