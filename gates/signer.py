"""The publisher's side: private keys, signing model folders and revocation lists.

Only the publisher (CI) imports this module; nothing under ``serve/`` does (a test checks it), so a serving
node has no code path that signs, and it never needs the private key.

The private key comes from ``$HARMGATE_SIGNING_KEY`` (PEM text), ``$HARMGATE_SIGNING_KEY_FILE`` (a path) or
``$HARMGATE_SIGNING_KEY_COMMAND`` (a command whose stdout is the PEM: the hook for a KMS or secret manager,
e.g. ``vault kv get -field=pem secret/harmgate``). It is never logged, written into a run directory or put
in an error message.

Model folders are signed with the OpenSSF ``model-signing`` package (private-key mode: offline, no
Sigstore): the in-toto statement lists every file with its sha256, and its predicate carries a ``harmgate``
field naming the version, manifest digest, config digest and code commit. A downloaded version verifies with
``model_signing verify key FOLDER --signature model.sig --public_key KEY.pub`` alone.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gates.trust import (ALGORITHMS, REVOCATIONS_PAYLOAD_TYPE, REVOCATIONS_SCHEMA, TrustStore, algorithm_of,
                         iso, key_id, pae, utc_now)
from harmgate.objectstore import RegistryError
from harmgate.config import StoreConfig

CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}


class SigningKeyMissing(RegistryError):
    """No usable private key: this host cannot approve anything (as every serving node)."""


@dataclass(frozen=True)
class SigningKey:
    private_key: ec.EllipticCurvePrivateKey
    source: str  # where it came from, for messages (never the key itself)

    @property
    def key_id(self) -> str:
        return key_id(self.private_key.public_key())

    @property
    def algorithm(self) -> str:
        return algorithm_of(self.private_key.public_key())

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey({self.key_id[:16]} from {self.source})"


def generate_private_key(curve: str = "p256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVES[curve]())


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _parse_private(pem: bytes, source: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyMissing(f"{source} does not hold a PEM private key (an HMAC secret from before the "
                                f"key-pair scheme? generate a key pair: `harmgate keys generate`)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningKeyMissing(f"{source} is not an ECDSA key; `harmgate keys generate` makes a P-256 one")
    algorithm_of(key.public_key())
    return SigningKey(key, source)


def load_signing_key(store: StoreConfig) -> SigningKey:
    var = store.signing_key_env
    if value := os.environ.get(var):
        return _parse_private(value.encode(), f"${var}")
    if path := os.environ.get(f"{var}_FILE"):
        try:
            return _parse_private(Path(path).read_bytes(), f"${var}_FILE ({path})")
        except OSError as err:
            raise SigningKeyMissing(f"cannot read ${var}_FILE ({path}): {err.strerror or err}") from None
    if command := os.environ.get(f"{var}_COMMAND"):
        try:
            done = subprocess.run(shlex.split(command), capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as err:
            raise SigningKeyMissing(f"${var}_COMMAND could not run: {type(err).__name__}") from None
        if done.returncode != 0:  # stderr may hold anything: report only the status
            raise SigningKeyMissing(f"${var}_COMMAND exited with status {done.returncode}")
        return _parse_private(done.stdout, f"${var}_COMMAND")
    raise SigningKeyMissing(f"no signing key: set ${var}_FILE to the publisher's private key (e.g. "
                            f".harmgate/keys/signing.key from `harmgate keys generate`), or ${var} / "
                            f"${var}_COMMAND; serving nodes need only the trust file")


def check_can_sign(key: SigningKey, trust: TrustStore) -> None:
    """The key must be in the trust file and currently valid for new signatures (active, not retired)."""
    trusted = trust.keys.get(key.key_id)
    if trusted is None:
        raise SigningKeyMissing(f"the signing key {key.key_id[:16]} ({key.source}) is not in the trust file "
                                f"{trust.source}: nothing it signs would verify anywhere")
    if trusted.status != "active":
        raise SigningKeyMissing(f"the signing key {key.key_id[:16]} is retired in {trust.source}; sign with the "
                                f"current key (`harmgate keys rotate` installed it as the new signing.key)")
    trust.key_for(key.key_id)  # not expired, not before its validity


def _ms_signer(key: SigningKey):
    """model-signing's EC signer for an in-memory key (its constructor only reads a PEM file)."""
    from model_signing._signing import sign_ec_key

    class _Signer(sign_ec_key.Signer):
        def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:  # noqa: D107 - skips the file read
            sign_ec_key._check_supported_ec_key(private_key.public_key())
            self._private_key = private_key

    return _Signer(key.private_key)


def sign_folder(folder: Path, key: SigningKey, harmgate: dict[str, Any]) -> bytes:
    """model.sig for every file under ``folder``: a Sigstore bundle (DSSE, in-toto statement, ECDSA)."""
    from model_signing import hashing
    from model_signing._signing import signing

    manifest = hashing.Config().use_file_serialization(hashing_algorithm="sha256").hash(Path(folder))
    payload = signing.Payload(manifest)
    # The v1.0 predicate allows extra fields (verifiers ignore them): the version binding and provenance.
    payload.statement.pb.predicate.update({"harmgate": harmgate})
    bundle = _ms_signer(key).sign(payload).bundle
    return bundle.to_json().encode()


def sign_revocations(key: SigningKey, *, name: str, sequence: int, revoked: dict[str, dict[str, Any]]) -> bytes:
    body = {"schema": REVOCATIONS_SCHEMA, "name": name, "sequence": sequence, "issued_at": iso(utc_now()),
            "revoked": revoked}
    payload = json.dumps(body, sort_keys=True, indent=1).encode()
    _, hash_type = ALGORITHMS[key.algorithm]
    sig = key.private_key.sign(pae(REVOCATIONS_PAYLOAD_TYPE, payload), ec.ECDSA(hash_type()))
    envelope = {"payloadType": REVOCATIONS_PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                "signatures": [{"keyid": key.key_id, "sig": base64.b64encode(sig).decode()}]}
    return (json.dumps(envelope, indent=1) + "\n").encode()
