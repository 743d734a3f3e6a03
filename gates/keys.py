"""Key files of the publisher: generate a key pair, rotate it, list and export trusted keys.

A keys folder (default ``.harmgate/keys``) holds::

    signing.key       the current private key (PEM, mode 0600): the publisher's only secret; never copy it to
                      a serving node
    trust.json        the trust file (harmgate.trust/1): every public key, its algorithm and validity; this is
                      what serving nodes get ($HARMGATE_TRUST_FILE)
    <key id>.pub      each public key as PEM, for `model_signing verify key ... --public_key`

``rotate`` makes a new key the signing key and retires the old one: it keeps verifying until the grace date
(its ``valid_until``), after which versions and revocation lists it signed are refused. Its private key is
deleted (a retired key must not sign again); re-sign what should outlive the grace date with
``harmgate registry resign``.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from gates.signer import CURVES, SigningKey, _parse_private, generate_private_key, private_pem
from gates.trust import TrustedKey, TrustError, TrustStore, algorithm_of, iso, key_id, public_pem, utc_now

SIGNING_KEY_FILE = "signing.key"
TRUST_FILE = "trust.json"


class KeyFileError(TrustError):
    pass


def _write_private(path: Path, pem: bytes) -> None:
    """Mode 0600 from the first byte (written beside, then renamed over any old key)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)


def _write_trust(path: Path, trust: TrustStore) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(trust.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def _load_or_empty(path: Path) -> TrustStore:
    return TrustStore.load(path) if path.exists() else TrustStore({}, str(path))


def _add_key(keys_dir: Path, trust: TrustStore, private, label: str) -> TrustedKey:
    public = private.public_key()
    entry = TrustedKey(key_id(public), algorithm_of(public), public, utc_now(), None, "active", label)
    trust.keys[entry.key_id] = entry
    (keys_dir / f"{entry.key_id[:16]}.pub").write_bytes(public_pem(public))
    return entry


def generate(keys_dir: Path, *, label: str = "", curve: str = "p256") -> TrustedKey:
    keys_dir = Path(keys_dir)
    if curve not in CURVES:
        raise KeyFileError(f"unknown curve {curve!r}; one of {', '.join(CURVES)}")
    if (keys_dir / SIGNING_KEY_FILE).exists():
        raise KeyFileError(f"{keys_dir / SIGNING_KEY_FILE} already exists; `harmgate keys rotate` replaces it")
    keys_dir.mkdir(parents=True, exist_ok=True)
    trust = _load_or_empty(keys_dir / TRUST_FILE)
    private = generate_private_key(curve)
    entry = _add_key(keys_dir, trust, private, label)
    _write_private(keys_dir / SIGNING_KEY_FILE, private_pem(private))
    _write_trust(keys_dir / TRUST_FILE, trust)
    return entry


def rotate(keys_dir: Path, *, grace_days: float, label: str = "", curve: str = "p256") -> tuple[TrustedKey, TrustedKey]:
    """(retired, new). The old key verifies for ``grace_days`` more days, then stops."""
    keys_dir = Path(keys_dir)
    if grace_days < 0:
        raise KeyFileError("grace_days must be >= 0")
    key_path = keys_dir / SIGNING_KEY_FILE
    if not key_path.exists():
        raise KeyFileError(f"no {key_path} to rotate; `harmgate keys generate` makes the first key")
    old = _parse_private(key_path.read_bytes(), str(key_path))
    trust = TrustStore.load(keys_dir / TRUST_FILE)
    current = trust.keys.get(old.key_id)
    if current is None:
        raise KeyFileError(f"{key_path} (key {old.key_id[:16]}) is not in {keys_dir / TRUST_FILE}")
    retired = TrustedKey(current.key_id, current.algorithm, current.public_key, current.valid_from,
                         utc_now() + timedelta(days=grace_days), "retired", current.label)
    trust.keys[retired.key_id] = retired
    private = generate_private_key(curve)
    new = _add_key(keys_dir, trust, private, label)
    _write_trust(keys_dir / TRUST_FILE, trust)  # trust first: a crash here leaves the old key usable
    _write_private(key_path, private_pem(private))
    return retired, new


def describe(trust: TrustStore) -> list[dict[str, Any]]:
    now = utc_now()
    rows = []
    for key in trust.keys.values():
        problem = key.refusal(now)
        rows.append({"key_id": key.key_id, "algorithm": key.algorithm, "status": key.status, "label": key.label,
                     "valid_from": iso(key.valid_from) if key.valid_from else None,
                     "valid_until": iso(key.valid_until) if key.valid_until else None,
                     "verifies_now": problem is None, "why_not": str(problem) if problem else None})
    return rows


def export_public(trust: TrustStore, prefix: str) -> bytes:
    """The PEM of the one key whose id starts with ``prefix`` (for the model-signing CLI)."""
    matches = [k for kid, k in trust.keys.items() if kid.startswith(prefix.lower())]
    if len(matches) != 1:
        raise KeyFileError(f"{len(matches)} keys in {trust.source} start with {prefix!r}; give more of the id")
    return public_pem(matches[0].public_key)


def signing_key_of(keys_dir: Path) -> SigningKey:
    path = Path(keys_dir) / SIGNING_KEY_FILE
    return _parse_private(path.read_bytes(), str(path))


def local_key_env(keys_dir: Path) -> dict[str, str]:
    """Environment for a publisher and services on one machine (demo, benchmarks): a key pair in ``keys_dir``
    (made if missing) as ``HARMGATE_SIGNING_KEY_FILE`` and ``HARMGATE_TRUST_FILE``."""
    keys_dir = Path(keys_dir)
    if not (keys_dir / SIGNING_KEY_FILE).exists():
        generate(keys_dir, label="local")
    return {"HARMGATE_SIGNING_KEY_FILE": str(keys_dir / SIGNING_KEY_FILE),
            "HARMGATE_TRUST_FILE": str(keys_dir / TRUST_FILE)}
