"""Fixtures that start a real SeaweedFS S3 server (owned by the store/registry work).

``s3_store_info`` starts one ``weed mini`` per test session on free, non-default ports (a developer's store
on 8333/9333/... keeps running untouched) in a temporary folder, and stops it at the end. ``s3_store`` is the
matching ``StoreConfig``: endpoint set, a bucket unique to the session, and ``local_state_dir`` pointing at the
temporary state folder, so credentials come from that instance's state.json. The credential environment
variables are removed for the session so a developer's exported keys cannot shadow the test instance's.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gates.keys import SIGNING_KEY_FILE, TRUST_FILE, generate
from gates.store import StoreInfo, store_down, store_up
from harmgate.config import StoreConfig

__all__ = ["s3_store", "s3_store_info", "signing_key"]  # fixtures only (conftest star-imports)

# One key pair for the whole session: versions published by session fixtures must verify in every test. The
# trust file (public key only) is exported for the session, as on a serving node; the private key only where a
# test publishes (the ``signing_key`` fixture, ``SIGNING_KEY`` in a publisher's environment).
KEYS_DIR = Path(tempfile.mkdtemp(prefix="harmgate-test-keys-"))
atexit.register(shutil.rmtree, KEYS_DIR, True)
SESSION_KEY = generate(KEYS_DIR, label="test session")
SIGNING_KEY = (KEYS_DIR / SIGNING_KEY_FILE).read_text()  # PEM private key: the value of $HARMGATE_SIGNING_KEY
TRUST_FILE_PATH = str(KEYS_DIR / TRUST_FILE)
os.environ[StoreConfig().trust_file_env] = TRUST_FILE_PATH


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_store_info(tmp_path_factory) -> Iterator[StoreInfo]:
    defaults = StoreConfig()
    saved = {k: os.environ.pop(k) for k in (defaults.access_key_env, defaults.secret_key_env) if k in os.environ}
    state_dir = tmp_path_factory.mktemp("seaweedfs")
    info = store_up(state_dir, s3_port=0, bucket=f"harmgate-test-{secrets.token_hex(4)}", timeout_s=30)
    try:
        yield info
    finally:
        store_down(state_dir)
        os.environ.update(saved)


@pytest.fixture(scope="session")
def s3_store(s3_store_info: StoreInfo) -> StoreConfig:
    return s3_store_info.store_config()


@pytest.fixture()
def signing_key(monkeypatch) -> str:
    monkeypatch.setenv(StoreConfig().signing_key_env, SIGNING_KEY)
    return SIGNING_KEY
