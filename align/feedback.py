"""Production feedback -> a point-wise training set for the next ULMA run, plus a held-out split for its gate.

Reads what the service stored under ``<prefix>/<name>/<version>/{completions,feedback}/`` (harmgate/records.py), joins
each rating with the completion it rates (the prompt messages and the reply the client received), and writes:

- ``train.jsonl``: one row per rated completion, ``{id, messages, reply, label, rating, category, completion_id,
  model, version, created}``; ``label`` is ``positive`` for good ratings and ``negative`` for bad ones, which is
  what the ULMA trainer (align/ulma.py) takes (data source ``format: pointwise``).
- ``heldout.jsonl``: the same rows for the held-out prompts, read by the ``feedback_heldout`` suite.
- ``export_manifest.json``: which S3 objects were read (with sha256), which feedback ids went where, counts and
  every skip by reason. The mixture copies it into the run's data manifest, so the registry manifest of the next
  model records which feedback it was trained on.

The split is by prompt (the normalised first user turn, hashed with the seed), so the same question is never in
both halves. A completion rated more than once keeps its latest rating (``conflicts`` counts disagreements).
Replies the service's moderation replaced are skipped by default: the client saw the canned refusal, not the
model's text.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from align.text import normalise
from harmgate.records import model_prefix, object_prefix, parse_lines
from harmgate.objectstore import ObjectStore
from harmgate.rundir import write_json, write_text_atomic

EXPORT_SCHEMA = "harmgate.feedback_export/1"
TRAIN_FILE, HELDOUT_FILE, MANIFEST_FILE = "train.jsonl", "heldout.jsonl", "export_manifest.json"
LABELS = {"good": "positive", "bad": "negative"}


@dataclass
class FeedbackExport:
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    manifest: dict[str, Any]


def _first_user_turn(messages: list[dict[str, Any]]) -> str:
    return next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")


def is_heldout(messages: list[dict[str, Any]], fraction: float, seed: int) -> bool:
    """Deterministic, by prompt: the same first user turn always lands on the same side."""
    digest = hashlib.sha256(f"{seed}\x1f{normalise(_first_user_turn(messages))}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_kind(objects: ObjectStore, store_prefix: str, name: str, version: str,
              kind: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records, [{key, kind, sha256, records}]) of one version's uploaded segments of ``kind``."""
    records: list[dict[str, Any]] = []
    read: list[dict[str, Any]] = []
    for key in sorted(objects.list_keys(object_prefix(store_prefix, name, version, kind))):
        data = objects.get_bytes(key) or b""
        got = parse_lines(data, f"s3://{objects.bucket}/{key}")
        records.extend(got)
        read.append({"key": key, "kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "records": len(got)})
    return records, read


def export_feedback(objects: ObjectStore, store_prefix: str, name: str, *, versions: list[str] | None = None,
                    holdout: float = 0.2, seed: int = 0, include_moderated: bool = False) -> FeedbackExport:
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    root = model_prefix(store_prefix, name)
    available = objects.list_subprefixes(root)
    if versions:
        unknown = sorted(set(versions) - set(available))
        if unknown:
            raise ValueError(f"no version {', '.join(unknown)} of {name} in s3://{objects.bucket}/{root} "
                             f"(there: {', '.join(sorted(available)) or 'none'})")
    chosen = sorted(versions or available)
    completions: dict[str, dict[str, Any]] = {}
    feedback: list[dict[str, Any]] = []
    objects_read: list[dict[str, Any]] = []
    for version in chosen:
        recs, read = read_kind(objects, store_prefix, name, version, "completions")
        completions.update({r["id"]: r for r in recs if isinstance(r.get("id"), str)})
        objects_read += read
        recs, read = read_kind(objects, store_prefix, name, version, "feedback")
        feedback += recs
        objects_read += read

    skipped: Counter[str] = Counter()
    latest: dict[str, dict[str, Any]] = {}
    ratings: dict[str, set[str]] = {}
    for fb in sorted(feedback, key=lambda r: str(r.get("created", ""))):
        cid = fb.get("completion_id")
        if fb.get("rating") not in LABELS or not isinstance(cid, str):
            skipped["malformed_feedback"] += 1
            continue
        ratings.setdefault(cid, set()).add(fb["rating"])
        if cid in latest:
            skipped["superseded_by_later_rating"] += 1
        latest[cid] = fb
    rows: list[dict[str, Any]] = []
    for cid, fb in latest.items():
        completion = completions.get(cid)
        if completion is None:
            skipped["completion_not_found"] += 1
            continue
        if completion.get("owner") != fb.get("owner"):
            skipped["owner_mismatch"] += 1  # the service refuses these; a record written by hand would not be
            continue
        if completion.get("moderated") and not include_moderated:
            skipped["moderated_reply"] += 1
            continue
        messages, reply = completion.get("messages"), completion.get("reply")
        if not isinstance(messages, list) or not messages or not isinstance(reply, str) or not reply.strip():
            skipped["empty_prompt_or_reply"] += 1
            continue
        rows.append({"id": fb["id"], "messages": messages, "reply": reply, "label": LABELS[fb["rating"]],
                     "rating": fb["rating"], "category": fb.get("category"), "comment": fb.get("comment"),
                     "completion_id": cid, "model": name, "version": completion.get("version"),
                     "created": fb.get("created")})
    rows.sort(key=lambda r: (str(r["created"]), r["id"]))
    train = [r for r in rows if not is_heldout(r["messages"], holdout, seed)]
    heldout = [r for r in rows if is_heldout(r["messages"], holdout, seed)]
    manifest = {
        "schema": EXPORT_SCHEMA, "model": name, "versions": chosen,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "holdout": holdout, "seed": seed, "split": "by normalised first user turn (sha256 with the seed)",
        "include_moderated": include_moderated,
        "store": {"bucket": objects.bucket, "endpoint": objects.endpoint, "prefix": root},
        "objects": objects_read,
        "counts": {"feedback_records": len(feedback), "completion_records": len(completions),
                   "rated_completions": len(latest),
                   "conflicts": sum(1 for r in ratings.values() if len(r) > 1),
                   "rows": len(rows), "skipped": dict(sorted(skipped.items())),
                   "train": dict(Counter(r["label"] for r in train)),
                   "heldout": dict(Counter(r["rating"] for r in heldout))},
        "feedback_ids": {"train": [r["id"] for r in train], "heldout": [r["id"] for r in heldout]},
    }
    return FeedbackExport(train, heldout, manifest)


def write_export(export: FeedbackExport, out_dir: str | Path) -> dict[str, Path]:
    """The two JSONL files, then the manifest with their sha256 (a manifest implies complete files)."""
    out = Path(out_dir)
    paths = {"train": out / TRAIN_FILE, "heldout": out / HELDOUT_FILE, "manifest": out / MANIFEST_FILE}
    files = {}
    for key, rows in (("train", export.train), ("heldout", export.heldout)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_text_atomic(paths[key], text)
        files[paths[key].name] = {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    write_json(paths["manifest"], {**export.manifest, "files": files})
    return paths


def export_summary(path: Path) -> dict[str, Any] | None:
    """The export manifest beside a pointwise data file, as the data manifest records it (None: not an export)."""
    manifest_path = path.parent / MANIFEST_FILE
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"path": str(manifest_path), "error": "unreadable"}
    if not isinstance(manifest, dict) or manifest.get("schema") != EXPORT_SCHEMA:
        return None
    keep = ("schema", "model", "versions", "created_at", "holdout", "seed", "store", "objects", "counts")
    return {"path": str(manifest_path), "sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
            **{k: manifest.get(k) for k in keep}}
