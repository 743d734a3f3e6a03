"""Verification side of the registry's signatures: the trust file, model signatures, revocation lists.

Everything here works with *public* keys only; it is what serving nodes import. The private-key side (key
generation, signing) is ``gates.signer``, which no module under ``serve/`` imports.

* **Trust file** (``harmgate.trust/1`` JSON): every key a node accepts, by key id (sha256 of the public key's
  PEM, the same id model-signing writes as the bundle's ``publicKey.hint``), with its algorithm, PEM and
  validity (``valid_from``, ``valid_until``, ``status`` active|retired). A retired key verifies until its
  ``valid_until`` (the rotation's grace date), then every signature it made is refused.
* **Model signature** (``model.sig``): a Sigstore bundle holding a DSSE envelope of an in-toto statement, as
  written by the OpenSSF ``model-signing`` package in private-key mode. Its ``resources`` list every file of
  the signed folder with its sha256; the predicate's extra ``harmgate`` field (which model-signing v1.0
  verifiers ignore, as its spec says) binds the statement to one name and version and names the manifest
  digest, config digest and code commit. Verification goes through model-signing's own verifier.
* **Revocation list** (``revocations.json``): a DSSE envelope (``application/vnd.harmgate.revocations+json``)
  over ``{name, sequence, revoked{version: {reason, revoked_at}}}``, ECDSA-signed by a trusted key.

Every refusal is a ``CheckFailed`` whose ``check`` names what failed (signature, manifest digest, file digest,
revocation, unknown key, retired key, expired key, legacy approval); its message says so in words.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harmgate.objectstore import RegistryError
from harmgate.config import StoreConfig

TRUST_SCHEMA = "harmgate.trust/1"
REVOCATIONS_SCHEMA = "harmgate.revocations/1"
REVOCATIONS_PAYLOAD_TYPE = "application/vnd.harmgate.revocations+json"
# algorithm name in the trust file -> (curve, hash): the curves model-signing's key mode supports
ALGORITHMS: dict[str, tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm]]] = {
    "ecdsa-p256-sha256": (ec.SECP256R1, hashes.SHA256),
    "ecdsa-p384-sha384": (ec.SECP384R1, hashes.SHA384),
    "ecdsa-p521-sha512": (ec.SECP521R1, hashes.SHA512),
}
MANIFEST_PATH = "harmgate/manifest.json"  # inside the signed folder


class CheckFailed(RegistryError):
    """A version (or revocation list) refused by one named check."""

    check = "signature"

    def __init__(self, message: str, check: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        if check is not None:
            self.check = check
        self.detail = detail or message  # the message without the "<name>:<version> refused by ..." prefix


class TrustError(RegistryError):
    """No usable trust file: nothing can be verified."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise TrustError(f"{what}: {value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the PEM public key: the id model-signing records as the signature bundle's key hint."""
    return hashlib.sha256(public_pem(public_key)).hexdigest()


def algorithm_of(public_key: ec.EllipticCurvePublicKey) -> str:
    for name, (curve, _) in ALGORITHMS.items():
        if isinstance(public_key.curve, curve):
            return name
    raise TrustError(f"unsupported key curve {public_key.curve.name}; use P-256, P-384 or P-521 (what "
                     f"model-signing's key mode supports)")


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    algorithm: str
    public_key: ec.EllipticCurvePublicKey
    valid_from: datetime | None
    valid_until: datetime | None
    status: str  # active | retired
    label: str = ""

    def refusal(self, now: datetime) -> CheckFailed | None:
        """Why a signature by this key is not accepted at ``now`` (None: it is)."""
        short = self.key_id[:16]
        if self.valid_from is not None and now < self.valid_from:
            return CheckFailed(f"signing key {short} is not valid before {iso(self.valid_from)}", "unknown key")
        if self.valid_until is not None and now >= self.valid_until:
            if self.status == "retired":
                return CheckFailed(f"signing key {short} was retired; its grace period ended "
                                   f"{iso(self.valid_until)} (re-sign with the current key: "
                                   f"`harmgate registry resign`)", "retired key")
            return CheckFailed(f"signing key {short} expired {iso(self.valid_until)}", "expired key")
        return None

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "algorithm": self.algorithm, "label": self.label, "status": self.status,
                "valid_from": iso(self.valid_from) if self.valid_from else None,
                "valid_until": iso(self.valid_until) if self.valid_until else None,
                "public_key": public_pem(self.public_key).decode()}


@dataclass
class TrustStore:
    keys: dict[str, TrustedKey] = field(default_factory=dict)
    source: str = "<memory>"

    @classmethod
    def parse(cls, data: Any, source: str) -> TrustStore:
        if not isinstance(data, dict) or data.get("schema") != TRUST_SCHEMA or not isinstance(data.get("keys"), list):
            raise TrustError(f"{source} is not a {TRUST_SCHEMA} trust file (expected {{\"schema\": "
                             f"\"{TRUST_SCHEMA}\", \"keys\": [...]}})")
        keys: dict[str, TrustedKey] = {}
        for i, entry in enumerate(data["keys"]):
            where = f"{source}: keys[{i}]"
            if not isinstance(entry, dict):
                raise TrustError(f"{where} is not an object")
            if "PRIVATE KEY" in json.dumps(entry):
                raise TrustError(f"{where} holds a private key; a trust file holds public keys only")
            try:
                public_key = serialization.load_pem_public_key(str(entry["public_key"]).encode())
            except (KeyError, ValueError) as err:
                raise TrustError(f"{where}: public_key is missing or not a PEM public key ({err})") from None
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise TrustError(f"{where}: only ECDSA keys (P-256/384/521) are supported")
            kid, alg = key_id(public_key), algorithm_of(public_key)
            if entry.get("key_id") not in (None, kid):
                raise TrustError(f"{where}: key_id {entry.get('key_id')} does not match the public key ({kid})")
            if entry.get("algorithm") not in (None, alg):
                raise TrustError(f"{where}: algorithm {entry.get('algorithm')!r} does not match the key ({alg})")
            status = entry.get("status", "active")
            if status not in ("active", "retired"):
                raise TrustError(f"{where}: status must be active or retired, not {status!r}")
            keys[kid] = TrustedKey(kid, alg, public_key, parse_time(entry.get("valid_from"), f"{where}.valid_from"),
                                   parse_time(entry.get("valid_until"), f"{where}.valid_until"), status,
                                   str(entry.get("label") or ""))
        return cls(keys, source)

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise TrustError(f"cannot read the trust file {path}: {err.strerror or err}") from None
        except ValueError as err:
            raise TrustError(f"the trust file {path} is not valid JSON: {err}") from None
        return cls.parse(data, str(path))

    def to_json(self) -> dict[str, Any]:
        return {"schema": TRUST_SCHEMA, "keys": [k.to_json() for k in self.keys.values()]}

    def key_for(self, kid: str, now: datetime | None = None) -> TrustedKey:
        key = self.keys.get(kid or "")
        if key is None:
            raise CheckFailed(f"signed by key {str(kid)[:16] or '(none named)'}, which is not in the trust file "
                              f"{self.source}", "unknown key")
        if (problem := key.refusal(now or utc_now())) is not None:
            raise problem
        return key


def trust_path(store: StoreConfig) -> Path:
    value = os.environ.get(store.trust_file_env) or store.trust_file
    if not value:
        raise TrustError(f"no trust file: set ${store.trust_file_env} (or store.trust_file) to the trust.json of "
                         f"public keys (`harmgate keys generate` writes one)")
    return Path(value)


def load_trust(store: StoreConfig) -> TrustStore:
    return TrustStore.load(trust_path(store))


# -- model signatures (model-signing bundles) ------------------------------------------------------------
@dataclass(frozen=True)
class Statement:
    """A verified model signature: who signed which files of which version."""

    name: str
    version: str
    key_id: str
    resources: dict[str, str]  # path in the signed folder -> sha256
    harmgate: dict[str, Any]


def _ms_verifier(public_key: ec.EllipticCurvePublicKey):
    """model-signing's EC verifier for an in-memory key (its constructor only reads a PEM file)."""
    from model_signing._signing import sign_ec_key

    class _Verifier(sign_ec_key.Verifier):
        def __init__(self, key: ec.EllipticCurvePublicKey) -> None:  # noqa: D107 - skips the file read
            sign_ec_key._check_supported_ec_key(key)
            self._public_key = key

    return _Verifier(public_key)


def read_bundle(data: bytes):
    """Parse a model.sig the way model-signing's ``Signature.read`` does; malformed -> CheckFailed."""
    from model_signing._signing import sign_sigstore_pb
    from sigstore_models.bundle import v1 as bundle_pb

    try:
        parsed = json.loads(data)
        material = parsed["verificationMaterial"]
        material.setdefault("tlogEntries", [])
        if "publicKey" in material:
            material["publicKey"].setdefault("hint", None)
        return sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(parsed))
    except Exception as err:  # noqa: BLE001 - JSON, shape or pydantic errors: all "not a bundle"
        raise CheckFailed(f"the signature file is malformed or truncated ({len(data)} bytes; "
                          f"{type(err).__name__}: {str(err)[:120]})") from None


def verify_model_signature(data: bytes, trust: TrustStore, *, name: str, version: str,
                           now: datetime | None = None) -> Statement:
    """The statement of a model.sig, if a trusted, currently valid key signed it for exactly ``name:version``."""
    signature = read_bundle(data)
    hint = signature.bundle.verification_material.public_key
    key = trust.key_for(getattr(hint, "hint", None) or "", now)
    try:
        manifest = _ms_verifier(key.public_key).verify(signature)
        payload = json.loads(signature.bundle.dsse_envelope.payload)
    except (crypto_exceptions.InvalidSignature, ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckFailed(f"the signature does not verify with key {key.key_id[:16]} (forged or altered "
                          f"statement: {type(err).__name__} {str(err)[:120]})") from None
    serialization_type = manifest.serialization_type
    if serialization_type.get("method") != "files" or serialization_type.get("hash_type") != "sha256":
        raise CheckFailed(f"the statement uses {serialization_type}; harmgate signs per-file sha256")
    meta = (payload.get("predicate") or {}).get("harmgate")
    if not isinstance(meta, dict) or meta.get("name") != name or meta.get("version") != version:
        signed_for = f"{meta.get('name')}:{meta.get('version')}" if isinstance(meta, dict) else "no harmgate version"
        raise CheckFailed(f"the statement was signed for {signed_for}, not {name}:{version} (copied signature)")
    resources = {rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    return Statement(name, version, key.key_id, resources, meta)


# -- revocation lists ------------------------------------------------------------------------------------
def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding (https://github.com/secure-systems-lab/dsse, protocol v1)."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


@dataclass(frozen=True)
class RevocationList:
    name: str
    sequence: int
    revoked: dict[str, dict[str, Any]]  # version -> {reason, revoked_at}
    issued_at: str
    key_id: str
    raw: bytes  # the signed envelope, as stored


def verify_revocations(data: bytes, trust: TrustStore, *, name: str, now: datetime | None = None) -> RevocationList:
    try:
        envelope = json.loads(data)
        payload = base64.b64decode(envelope["payload"], validate=True)
        [sig] = envelope["signatures"]
        kid, raw_sig = str(sig["keyid"]), base64.b64decode(sig["sig"], validate=True)
        payload_type = envelope["payloadType"]
    except Exception as err:  # noqa: BLE001 - any shape problem is a malformed list
        raise CheckFailed(f"the revocation list of {name} is malformed or truncated ({type(err).__name__})",
                          "revocation") from None
    if payload_type != REVOCATIONS_PAYLOAD_TYPE:
        raise CheckFailed(f"the revocation list of {name} has payload type {payload_type!r}", "revocation")
    try:
        key = trust.key_for(kid, now)
    except CheckFailed as err:
        raise CheckFailed(f"the revocation list of {name}: {err}", "revocation") from None
    _, hash_type = ALGORITHMS[key.algorithm]
    try:
        key.public_key.verify(raw_sig, pae(payload_type, payload), ec.ECDSA(hash_type()))
    except crypto_exceptions.InvalidSignature:
        raise CheckFailed(f"the revocation list of {name} has an invalid signature (forged or altered)",
                          "revocation") from None
    body = json.loads(payload)
    if body.get("schema") != REVOCATIONS_SCHEMA or body.get("name") != name or not isinstance(body.get("sequence"), int):
        raise CheckFailed(f"the revocation list is not {name}'s (signed for {body.get('name')!r})", "revocation")
    revoked = body.get("revoked") or {}
    return RevocationList(name, body["sequence"], revoked, str(body.get("issued_at")), kid, data)
