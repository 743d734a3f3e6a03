"""Bearer-token auth: keys from an environment variable (comma- or space-separated) and/or a file (one a line).

Every presented token is compared with every key by ``hmac.compare_digest`` (constant time, no early exit),
so response timing says nothing about how much of a key was right. Keys shorter than 16 characters are
refused at startup: they can be guessed.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path

from harmgate.config import ServiceConfig

MIN_KEY_CHARS = 16
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class AuthConfigError(ValueError):
    """Unusable key configuration; the message names the variable or file."""


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_config(cls, service: ServiceConfig, environ: Mapping[str, str] | None = None) -> "ApiKeys":
        environ = os.environ if environ is None else environ
        # Commas or whitespace separate keys (a secret file passed through VAR_FILE has one per line).
        keys = [(f"${service.api_keys_env}", k) for k in re.split(r"[,\s]+", environ.get(service.api_keys_env, ""))]
        if service.api_keys_file:
            path = Path(service.api_keys_file)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as err:
                raise AuthConfigError(f"cannot read service.api_keys_file {path}: {err.strerror or err}") from None
            keys += [(f"{path}:{i}", line.strip()) for i, line in enumerate(lines, 1)
                     if line.strip() and not line.lstrip().startswith("#")]
        keys = [(where, k) for where, k in keys if k]
        for where, key in keys:
            if len(key) < MIN_KEY_CHARS:
                raise AuthConfigError(f"API key in {where} is shorter than {MIN_KEY_CHARS} characters; use e.g. "
                                      f"`openssl rand -hex 32`")
        return cls([k for _, k in keys])

    def check(self, authorization: str | None) -> bool:
        """True when the ``Authorization`` header carries one of the keys."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        token = authorization[len("Bearer "):].strip().encode()
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        return ok


def open_api_problem(keys: ApiKeys, host: str, service: ServiceConfig) -> str | None:
    """None if this setup is acceptable; else why not. Without keys the API is open, so only on loopback."""
    if keys.enabled or host in LOOPBACK:
        return None
    return (f"no API keys configured and the service would listen on {host}: set ${service.api_keys_env} or "
            f"service.api_keys_file (an API without keys is only allowed on a loopback address)")
