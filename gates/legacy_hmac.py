"""The retired HMAC approval scheme (``harmgate.approval/1``), kept only to *verify* old approvals once, when
``harmgate registry resign`` moves a version to model-signing signatures.

Nothing here signs, and no reader serves a version on an HMAC approval: such a version is listed as
``legacy-hmac`` and refused by the service (check ``legacy approval``) until it is re-signed. The HMAC key
verifies and forges alike, which is why it was retired (docs/SERVICE.md, threat model).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from gates.manifest import canonical_json
from gates.trust import CheckFailed

APPROVAL_SCHEMA = "harmgate.approval/1"
SIGNATURE_ALG = "HMAC-SHA256"
HMAC_KEY_ENV = "HARMGATE_HMAC_KEY"  # the old HARMGATE_SIGNING_KEY value, for `registry resign` only
MIN_KEY_BYTES = 16


def hmac_key(env_var: str = HMAC_KEY_ENV) -> bytes:
    key = os.environ.get(env_var, "")
    if len(key.encode()) < MIN_KEY_BYTES:
        raise CheckFailed(f"${env_var} is not set (or shorter than {MIN_KEY_BYTES} bytes): set it to the old HMAC "
                          f"signing key to verify approvals made before the key-pair scheme", "legacy approval")
    return key.encode()


def legacy_signature(key: bytes, record: dict[str, Any]) -> str:
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    return hmac.new(key, canonical_json(unsigned), hashlib.sha256).hexdigest()


def verify_legacy_approval(key: bytes, record: Any, *, name: str, version: str, manifest_sha256: str) -> None:
    """Raise CheckFailed unless ``record`` is a valid HMAC approval of exactly this (canonical) manifest digest."""
    where = f"{name}:{version}"
    if not isinstance(record, dict) or not isinstance(record.get("signature"), str):
        raise CheckFailed(f"{where}: the HMAC approval record is malformed", "legacy approval")
    if record.get("signature_alg") != SIGNATURE_ALG:
        raise CheckFailed(f"{where}: unsupported approval signature {record.get('signature_alg')!r}", "legacy approval")
    if not hmac.compare_digest(legacy_signature(key, record), record["signature"]):
        raise CheckFailed(f"{where}: the HMAC approval does not verify with ${HMAC_KEY_ENV} (forged, altered, or "
                          f"another key)", "legacy approval")
    if record.get("name") != name or record.get("version") != version:
        raise CheckFailed(f"{where}: the HMAC approval is for {record.get('name')}:{record.get('version')}",
                          "legacy approval")
    if not hmac.compare_digest(str(record.get("manifest_sha256")), manifest_sha256):
        raise CheckFailed(f"{where}: manifest.json does not match the HMAC-approved digest", "manifest digest")

