"""gunicorn settings for production:  HARMGATE_CONFIG=run.yaml gunicorn -c serve/gunicorn.conf.py

Process model: one model copy per worker process. Workers load the model after the fork (``preload_app =
False``): torch thread pools and CUDA contexts do not survive a fork, and each worker owns its registry watcher
and batcher. The master only imports torch/transformers, so forked workers start fast.
Memory trade-off: N workers hold N copies of the weights (SmolLM2-135M fp32 ~0.5 GiB each; Llama 3.1 8B
bf16 ~16 GiB each, so one worker per GPU), plus, during a hot swap, a second copy while the new version loads.
Within a worker, ``threads`` connections share the model through the dynamic batcher, which is what makes
concurrency pay; more workers only help when there are cores or GPUs to spare (CPU threads are split between
workers). Settings come from the run config's ``service`` section; HARMGATE_BIND / HARMGATE_WORKERS /
HARMGATE_THREADS override them (e.g. ``0.0.0.0:8000`` in a container).

The master checks, before any worker starts, what ``harmgate serve`` checks (config, API keys, an approved
version that downloads and verifies); on failure it logs one ``harmgate.serve: refusing to start: <reason>``
line and exits with status 2. A worker that cannot load the model or the moderation scorer logs the same line
and fails to boot, which stops gunicorn with status 3.
"""

import logging
import os
import sys
import tempfile

from harmgate.config import ConfigError, load_config

_config_path = os.environ.get("HARMGATE_CONFIG", "")
_config, _config_error = None, "HARMGATE_CONFIG is not set (path of the run config YAML)"
if _config_path:
    try:
        _config, _config_error = load_config(_config_path), None
    except ConfigError as err:
        _config_error = str(err).replace("\n", " ")
_service = _config.service if _config is not None else None

bind = [os.environ.get("HARMGATE_BIND") or (f"{_service.host}:{_service.port}" if _service else "127.0.0.1:8000")]
workers = int(os.environ.get("HARMGATE_WORKERS") or (_service.workers if _service else 1))
threads = int(os.environ.get("HARMGATE_THREADS") or (_service.threads if _service else 16))
worker_class = "gthread"
wsgi_app = "serve.wsgi:create_app_from_env()"
preload_app = False
timeout = 120            # worker heartbeat; gthread keeps beating while requests generate in other threads
graceful_timeout = 30    # SIGTERM: in-flight requests get this long to finish
keepalive = 5
accesslog = "-"          # method, path, status, size, time: never bodies, so never prompts
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
errorlog = "-"
loglevel = "info"
# gunicorn >= 25's control socket (~/.gunicorn/gunicorn.ctl) is not used, and two instances on one host would
# share its path; older versions ignore the setting.
control_socket_disable = True

# Every worker writes its metrics here and /metrics adds them up (prometheus_client's multiprocess mode).
# Set before any worker imports prometheus_client; a fresh folder per master start, so no stale counts.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="harmgate-metrics-")
os.environ["HARMGATE_WORKERS"] = str(workers)


def _exposed_host(addresses) -> str:
    """The first non-loopback host bound (a unix socket counts as local), for the open-API check."""
    from serve.auth import LOOPBACK

    hosts = [a[0] for a in addresses if isinstance(a, tuple)]
    return next((h for h in hosts if h not in LOOPBACK), "127.0.0.1")


def on_starting(server):
    from gates.registry import Registry, RegistryError
    from serve.bootstrap import REFUSED, StartupError, check_keys, resolve_verified, setup_logging

    setup_logging()
    log = logging.getLogger("harmgate.serve")
    try:
        if _config is None:
            raise StartupError(_config_error)
        host = _exposed_host(server.cfg.address)
        check_keys(_config, host)
        try:
            registry = Registry(_config.store)
        except RegistryError as err:
            raise StartupError(str(err)) from None
        model = resolve_verified(_config, registry)
    except StartupError as err:
        log.error("refusing to start: %s", err)
        sys.exit(REFUSED)
    os.environ["HARMGATE_BIND_HOST"] = host
    _preimport(model.local_dir)
    log.info("verified %s:%s; starting %d worker(s) x %d threads, one model copy per worker", model.name,
             model.version, workers, threads)


def _preimport(model_dir) -> None:
    """Import (only import) the heavy modules once in the master, so each forked worker starts in a fraction of
    the time: torch, transformers and the served architecture's modeling code. Nothing is loaded or run, so no
    CUDA context or thread pool exists yet to be broken by the fork. Best effort: a failure only costs time."""
    try:
        import torch  # noqa: F401
        from transformers import AutoConfig, PreTrainedTokenizerFast  # noqa: F401
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        import serve.app  # noqa: F401

        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model_dir, local_files_only=True))]
    except Exception as err:  # noqa: BLE001
        logging.getLogger("harmgate.serve").info("pre-import skipped (%s: %s)", type(err).__name__, err)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
