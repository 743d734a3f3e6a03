"""Content digests of model folders (core: align/ and evals/ both identify weights by them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weights_sha256(folder: Path) -> str:
    """sha256 over a model folder's weight files (name, then bytes, in name order), streamed.

    Raises FileNotFoundError when the folder holds no ``*.safetensors`` / ``*.bin`` file."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{folder} has no weight files (*.safetensors / *.bin)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(8 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
