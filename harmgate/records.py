"""Records kept beside a model version in the registry bucket: the service's completion log and its users'
feedback (serve/spool.py writes them, serve/completion_log.py and align/feedback.py read them)::

    <prefix>/<name>/<version>/completions/<segment>.jsonl   one completion the service returned, a line
    <prefix>/<name>/<version>/feedback/<segment>.jsonl      one rating of such a completion, a line

They are not part of the signed manifest: they are written after publication, by the service.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("harmgate.records")
KINDS = ("completions", "feedback")


def object_prefix(store_prefix: str, name: str, version: str, kind: str) -> str:
    """Where a version's records of ``kind`` live in the bucket (beside its manifest, under the registry prefix)."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    return "/".join(p for p in (store_prefix.strip("/"), name, version, kind) if p) + "/"


def model_prefix(store_prefix: str, name: str) -> str:
    """The folder holding every version of ``name``."""
    return "/".join(p for p in (store_prefix.strip("/"), name) if p) + "/"


def parse_lines(data: bytes, where: str) -> list[dict[str, Any]]:
    """Records of a JSONL segment. A torn last line (a crash mid-write, never acknowledged) is dropped."""
    records = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i == len(lines):  # no newline after it: the write was interrupted before its fsync
                log.warning("%s: dropping a torn last line (%d bytes)", where, len(line))
                continue
            raise ValueError(f"{where} line {i} is not JSON") from None
        if isinstance(record, dict):
            records.append(record)
    return records
