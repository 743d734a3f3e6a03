"""Start the service, but only on an approved, unrevoked, hash-verified model version.

Every reason not to serve (no approved version, bad signature, tampered file, store down, bad config) ends
the process with exit status 2 and one line ``harmgate.serve: refusing to start: <reason>``, so a supervisor
or a deploy script sees at once why.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gates.registry import ApprovedModel, NotApproved, Registry, RegistryError
from harmgate.config import ConfigError, RunConfig, load_config

log = logging.getLogger("harmgate.serve")
REFUSED = 2


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)


def resolve_model(config: RunConfig) -> ApprovedModel:
    """The pinned version, or the newest approved one, fetched and verified into the cache."""
    name = config.service.model_name or config.name
    registry = Registry(config.store)
    version = config.service.version or registry.latest_approved(name)
    if version is None:
        where = f"s3://{config.store.bucket}/{config.store.prefix}/{name}/ on {registry.objects.endpoint}"
        raise NotApproved(f"no approved, unrevoked version of {name} in {where}")
    return registry.fetch_verified(name, version, Path(config.service.cache_dir))


def serve_main(config_path: str, host: str | None = None, port: int | None = None) -> int:
    _setup_logging()
    try:
        config = load_config(config_path)
        model = resolve_model(config)
    except (ConfigError, RegistryError, OSError) as err:  # OSError: e.g. an unwritable cache_dir
        log.error("refusing to start: %s", err)
        return REFUSED
    try:
        from serve.app import create_app

        app = create_app(model, config.service)
    except (OSError, ValueError) as err:  # e.g. a folder transformers cannot load
        log.error("refusing to start: cannot load %s:%s: %s", model.name, model.version, err)
        return REFUSED
    log.info("serving %s:%s (manifest sha256 %s) from %s", model.name, model.version, model.manifest_sha256,
             model.local_dir)
    app.run(host=host or config.service.host, port=port or config.service.port, threaded=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config YAML (its store and service sections)")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    return serve_main(args.config, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
