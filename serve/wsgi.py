"""The WSGI entry for gunicorn: ``serve.wsgi:create_app_from_env()`` (see serve/gunicorn.conf.py).

Each worker process calls it once after the fork and loads its own model copy: the newest approved version
(or the pinned one), verified again from the cache the master's startup check filled. ``HARMGATE_CONFIG`` names
the run config. A worker that cannot start logs the one 'refusing to start' line and fails to boot, which
stops gunicorn (exit 3).
"""

from __future__ import annotations

import atexit
import logging
import os

from flask import Flask

from harmgate.config import ConfigError, load_config
from serve.bootstrap import StartupError, build_service, setup_logging

log = logging.getLogger("harmgate.serve")


def worker_torch_threads(workers: int, explicit: int | None) -> int | None:
    """Split the CPU cores between workers unless set: N workers x all cores each would thrash."""
    if explicit or workers <= 1:
        return explicit
    return max(1, (os.cpu_count() or 1) // workers)


def create_app_from_env() -> Flask:
    setup_logging()
    path = os.environ.get("HARMGATE_CONFIG")
    try:
        if not path:
            raise StartupError("HARMGATE_CONFIG is not set (path of the run config YAML)")
        config = load_config(path)
        workers = int(os.environ.get("HARMGATE_WORKERS", config.service.workers))
        handle = build_service(config, bind_host=os.environ.get("HARMGATE_BIND_HOST", config.service.host),
                               torch_threads=worker_torch_threads(workers, config.service.torch_threads))
    except (ConfigError, StartupError) as err:
        log.error("refusing to start: %s", err)
        raise
    handle.start_background()
    # A worker that exits (SIGTERM, max_requests) uploads its waiting feedback records; one that is killed leaves
    # them fsynced in the spool, and the next worker's start uploads them.
    atexit.register(handle.close)
    return handle.app
