"""Start the service for development (`harmgate serve`, `python -m serve.runner`), but only on an approved,
unrevoked, hash-verified model version. Production runs the same app under gunicorn (serve/gunicorn.conf.py).

Every reason not to serve (no approved version, revoked, bad signature, tampered file, store down after the
retries, no moderation scorer, bad keys or config) ends the process with exit status 2 and one line
``harmgate.serve: refusing to start: <reason>``, so a supervisor or a deploy script sees at once why.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from harmgate.config import ConfigError, load_config
from serve.bootstrap import REFUSED, StartupError, build_service, setup_logging

log = logging.getLogger("harmgate.serve")


def serve_main(config_path: str, host: str | None = None, port: int | None = None) -> int:
    setup_logging()
    try:
        config = load_config(config_path)
        bind_host = host or config.service.host
        handle = build_service(config, bind_host=bind_host)
    except (ConfigError, StartupError) as err:
        log.error("refusing to start: %s", err)
        return REFUSED
    handle.start_background()
    # SIGTERM (a supervisor's stop) ends the server like Ctrl-C, so close() uploads the waiting feedback records.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        handle.app.run(host=bind_host, port=port or config.service.port, threaded=True)
    finally:
        handle.close()
    return 0


def check_main(config_path: str, host: str | None = None) -> int:
    """Everything startup does (keys, registry, verification, scorer, model load), then exit: a deploy preflight."""
    setup_logging()
    try:
        config = load_config(config_path)
        handle = build_service(config, bind_host=host or config.service.host)
    except (ConfigError, StartupError) as err:
        log.error("refusing to start: %s", err)
        return REFUSED
    served, _ = handle.runtime.slot.get()
    handle.close()
    print(f"ok: would serve {served.label if served else '?'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config YAML (its store and service sections)")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--check", action="store_true", help="verify and load, then exit 0 (or 2) without serving")
    args = parser.parse_args(argv)
    if args.check:
        return check_main(args.config, args.host)
    return serve_main(args.config, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
