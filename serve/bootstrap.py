"""Startup: from a run config to a running app, but only on an approved, unrevoked, hash-verified version.

Order (cheapest refusal first): API keys, registry (resolve, download, verify with the trust file's public keys;
this process never needs, reads or uses a signing key; an unreachable store is retried
with backoff for ``service.store_wait_s``, then a verified cached copy is used), moderation scorer, model load. Any failure is a ``StartupError``
whose message is the one line the runner logs before exiting with status 2.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flask import Flask

from evals.scorers.base import TextScorer
from gates.registry import ApprovedModel, NotApproved, Registry, RegistryError, StoreUnavailable
from harmgate.config import RunConfig
from serve.app import Runtime, create_app
from serve.auth import ApiKeys, AuthConfigError, open_api_problem
from serve.batcher import Batcher
from serve.dashboard import Dashboard
from serve.engine import Engine
from serve.metrics import Metrics
from serve.moderation import ModerationUnavailable, Moderator, load_scorer
from serve.slot import ModelSlot, Served
from serve.watcher import RegistryWatcher, refusal_line, unservable

log = logging.getLogger("harmgate.serve")
REFUSED = 2


class StartupError(RuntimeError):
    """A reason not to serve; its message is the single 'refusing to start' log line."""


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)


def model_name(config: RunConfig) -> str:
    return config.service.model_name or config.name


def check_keys(config: RunConfig, bind_host: str) -> ApiKeys:
    try:
        keys = ApiKeys.from_config(config.service)
    except AuthConfigError as err:
        raise StartupError(str(err)) from None
    if problem := open_api_problem(keys, bind_host, config.service):
        raise StartupError(problem)
    signing_vars = [v for v in ("", "_FILE", "_COMMAND") if os.environ.get(config.store.signing_key_env + v)]
    if signing_vars:  # never read here; its presence is a deployment mistake worth saying
        log.warning("$%s is set in this serving process's environment: a serving node needs only the trust file "
                    "($%s); keep the private key with the publisher", config.store.signing_key_env + signing_vars[0],
                    config.store.trust_file_env)
    if not keys.enabled:
        log.warning("no API keys configured: the API is open to every local user of %s (set $%s to require keys)",
                    bind_host, config.service.api_keys_env)
    return keys


def resolve_verified(config: RunConfig, registry: Registry) -> ApprovedModel:
    """The pinned version (it must be approved) or the newest approved one, downloaded and verified.

    Newer versions a check refuses are logged (naming the check) and skipped: the newest one that passes every
    check is served. If the store stays unreachable for ``service.store_wait_s``, the newest copy in the cache
    that still verifies offline (recorded signature with the trust file, every file's sha256; not a version this
    cache saw revoked) is served, so a restart during a store outage does not take the service down; the
    registry watcher applies any revocation once the store answers again."""
    name, service = model_name(config), config.service
    cache_dir = Path(service.cache_dir)
    deadline, delay, warned = time.monotonic() + service.store_wait_s, 0.5, False
    while True:
        try:
            rows = registry.list_versions(name, cache_dir)
            if rows and not rows[0].get("revocations_usable", True):
                raise NotApproved(f"revocation check: {rows[0].get('revocation_problem')}", "revocation")
            if rows and rows[0].get("revocation_problem"):
                log.error("revocation check: %s", rows[0]["revocation_problem"])
            version = service.version
            if version is None:
                for row in reversed(rows):
                    if unservable(row) is None:
                        version = row["version"]
                        break
                    if row.get("signature") not in ("valid", "unverified", "missing"):
                        log.warning(refusal_line(name, row))
            if version is None:
                where = f"s3://{config.store.bucket}/{config.store.prefix}/{name}/ on {registry.objects.endpoint}"
                raise NotApproved(f"no approved, unrevoked version of {name} in {where}")
            return registry.fetch_verified(name, version, cache_dir)
        except StoreUnavailable as err:
            left = deadline - time.monotonic()
            if left <= 0:
                try:
                    cached = registry.cached_verified(name, cache_dir, version=service.version)
                except (RegistryError, OSError) as cache_err:  # e.g. no trust file to verify with
                    raise StartupError(f"{err}; and the cache cannot be used: {cache_err}") from None
                if cached is None:
                    raise StartupError(f"{err} (still unreachable after {service.store_wait_s:g} s, and no copy in "
                                       f"{cache_dir / name} verifies to fall back on)") from None
                log.warning("store unreachable for %g s: serving %s:%s from the verified cache %s (signature and "
                            "every file checked offline; revocations apply once the store answers)",
                            service.store_wait_s, cached.name, cached.version, cached.local_dir)
                return cached
            if not warned:
                log.warning("store unreachable, retrying for up to %.0f s: %s", left, err)
                warned = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
        except RegistryError as err:
            raise StartupError(str(err)) from None
        except OSError as err:  # e.g. an unwritable cache_dir
            raise StartupError(f"cannot use cache_dir {service.cache_dir}: {err}") from None


@dataclass
class ServiceHandle:
    app: Flask
    runtime: Runtime
    watcher: RegistryWatcher

    def start_background(self) -> None:
        self.watcher.start()
        if self.runtime.feedback is not None:
            self.runtime.feedback.start()  # uploads what a previous run left in the spool, then flushes

    def close(self) -> None:
        self.watcher.stop()
        self.runtime.slot.withdraw("shutting down")
        if self.runtime.feedback is not None:
            self.runtime.feedback.close()  # uploads the waiting records (kept on disk if the store is down)


def build_service(config: RunConfig, *, bind_host: str, scorer: TextScorer | None = None,
                  engine_loader: Callable[[Path], Engine] | None = None,
                  torch_threads: int | None = None) -> ServiceHandle:
    """Everything the service needs, verified; raises StartupError. ``scorer``/``engine_loader``: for tests."""
    service = config.service
    keys = check_keys(config, bind_host)
    try:
        registry = Registry(config.store)
    except RegistryError as err:
        raise StartupError(str(err)) from None
    model = resolve_verified(config, registry)
    try:
        moderator = Moderator(scorer if scorer is not None else load_scorer(config), service.moderation)
    except ModerationUnavailable as err:
        raise StartupError(str(err)) from None

    metrics = Metrics()
    threads = torch_threads or service.torch_threads
    load_engine = engine_loader or (lambda path: Engine.load(path, torch_threads=threads))

    def load(approved: ApprovedModel) -> Served:
        engine = load_engine(approved.local_dir)
        batcher = Batcher(engine, max_batch_size=service.max_batch_size, wait_s=service.batch_wait_ms / 1000,
                          max_queued=service.max_queued_requests, on_batch=metrics.batch_size.observe,
                          name=f"{approved.name}:{approved.version}")
        return Served(approved, engine, batcher)

    try:
        served = load(model)
    except (OSError, ValueError, RuntimeError) as err:  # e.g. a folder transformers cannot load
        raise StartupError(f"cannot load {model.name}:{model.version}: {err}") from None
    slot = ModelSlot()
    slot.install(served)
    watcher = RegistryWatcher(registry=registry, name=model.name, pinned=service.version,
                              cache_dir=Path(service.cache_dir), slot=slot, load=load,
                              interval_s=service.registry_poll_s, metrics=metrics)
    watcher.check_bucket(model)  # a warm cache may be served although the bucket changed since: say so
    metrics.model_ready.set(1)
    metrics.model_info.labels(model.name, model.version, model.manifest_sha256).set(1)
    feedback = None
    if service.feedback.enabled:
        from serve.feedback import FeedbackService

        try:
            feedback = FeedbackService.build(service.feedback, registry, model.name)
        except OSError as err:
            raise StartupError(f"cannot use service.feedback.spool_dir {service.feedback.spool_dir}: {err}") from None
    runtime = Runtime(service=service, slot=slot, moderator=moderator, keys=keys, metrics=metrics,
                      dashboard=Dashboard(service.dashboard_path, registry), feedback=feedback)
    log.info("serving %s (manifest sha256 %s) from %s; moderation: %s above %.2f; %s; feedback %s", served.label,
             model.manifest_sha256, model.local_dir, moderator.name, moderator.threshold,
             f"{len(keys)} API key(s)" if keys.enabled else "no API keys (loopback only)",
             f"on (completions and ratings recorded, spool {service.feedback.spool_dir})" if feedback else "off")
    return ServiceHandle(create_app(runtime), runtime, watcher)
