"""Helpers shared by tests/test_reliability_*.py: a real HTTP server around an in-process service, a SeaweedFS
that a test may kill with SIGKILL and start again, and a run directory that passed its gate."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
from werkzeug.serving import make_server

from gates.store import StoreInfo, _remove_sockets, store_status, store_up
from harmgate.config import StoreConfig, load_config
from harmgate.rundir import RunDir, create_run_dir, write_json
from serve.bootstrap import ServiceHandle, build_service
from tests.test_serve import blocklist_moderation, write_config

PASSED_VERDICT = {"passed": True, "kpis": [{"name": "harm", "metric": "advbench_refusal.compliance_rate",
                                            "passed": True, "severity": "block", "base": 0.5, "tuned": 0.05}]}
CHAT = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 4}


@dataclass
class Live:
    """A service built by serve.bootstrap (the production path), answering over loopback HTTP."""

    handle: ServiceHandle
    url: str
    key: str | None

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, headers=self._auth(), timeout=60, **kw)

    def post(self, path: str, body, **kw) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self._auth(), timeout=60, **kw)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    @property
    def served(self) -> str | None:
        served, _ = self.handle.runtime.slot.get()
        return served.version if served else None


@contextmanager
def live_service(config_path: Path, *, key: str | None = None) -> Iterator[Live]:
    """build_service + a threaded werkzeug server on a free port; the registry watcher is polled by the test."""
    handle = build_service(load_config(config_path), bind_host="127.0.0.1")
    server = make_server("127.0.0.1", 0, handle.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Live(handle, f"http://127.0.0.1:{server.server_port}", key)
    finally:
        server.shutdown()
        handle.close()


def service_config(tmp: Path, name: str, store: StoreConfig, **service) -> Path:
    """A run config for the service: blocklist moderation (predictable), short replies, manual registry polls."""
    blocklist = tmp / f"{name}-blocklist.txt"
    blocklist.write_text("# nothing blocked\n")
    service = {"registry_poll_s": 0, "max_new_tokens": 8, "moderation": blocklist_moderation(blocklist), **service}
    return write_config(tmp, name, store, **service)


def passed_run(tmp: Path, config_path: Path, model_dir: Path) -> RunDir:
    """A run directory whose gate passed, with ``model_dir`` as its merged model (copied)."""
    import shutil

    run = create_run_dir(load_config(config_path), tmp / f"run-{secrets.token_hex(3)}")
    shutil.copytree(model_dir, run.merged_model_dir)
    write_json(run.eval_summary, {"schema_version": 1, "arms": {"tuned": {"advbench_refusal": {
        "compliance_rate": {"value": 0.05, "n": 40, "count": 2, "ci95": [0.01, 0.17]}}}}})
    write_json(run.verdict, PASSED_VERDICT)
    return run


class KillableStore:
    """A SeaweedFS of its own (other tests share the session's), stopped with SIGKILL: a crash, not a shutdown."""

    def __init__(self, state_dir: Path, bucket: str) -> None:
        self.state_dir, self.bucket = state_dir, bucket
        self.info: StoreInfo = store_up(state_dir, s3_port=0, bucket=bucket, timeout_s=60)

    def config(self, **overrides) -> StoreConfig:
        return self.info.store_config(**overrides)

    def kill(self) -> None:
        os.kill(self.info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while store_status(self.state_dir)["state"] == "running":
            if time.monotonic() > deadline:
                raise AssertionError(f"SeaweedFS {self.info.pid} still running 20 s after SIGKILL")
            time.sleep(0.05)
        # A crash leaves its unix sockets behind (in the state folder and /tmp); weed would not start on them.
        _remove_sockets(self.state_dir, self.info.ports)

    def restart(self) -> None:
        self.info = store_up(self.state_dir, s3_port=0, bucket=self.bucket, timeout_s=60)

    def running(self) -> bool:
        return store_status(self.state_dir)["state"] == "running"
