"""Raw rows of one training source: a local/mirrored file or, for connected users, the hub.

Files: ``.jsonl``, ``.json`` (a list, an object holding exactly one list, or a taxonomy of nested objects whose
leaves are lists of strings, as HarmfulQA and CatQA ship: each string becomes ``{"prompt", "category"}``), ``.csv``
and ``.txt`` (one ``{"text": line}`` row per non-empty line), each optionally ``.gz``. A bad record (invalid UTF-8, invalid JSON, not an object) is counted under its reason and skipped,
so one corrupt line does not sink a 100k-row load; a missing or unreadable *file* is a :class:`DataSourceError`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harmgate.config import DataSource
from harmgate.mirror import (DATA_MIRROR_ENV, DataNotFound, ResolvedData, data_mirror_root, hub_access_hint,
                             resolve_data)

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (decoded with surrogateescape)


class DataSourceError(RuntimeError):
    """A source that cannot be read at all (missing file, unknown format, hub unreachable)."""


@dataclass
class SourceRows:
    rows: list[dict[str, Any]]
    rows_read: int                      # records considered, including skipped ones (limit counts these)
    skipped: Counter[str] = field(default_factory=Counter)
    origin: dict[str, Any] = field(default_factory=dict)  # {"path", "sha256"} or {"hub", "data_dir", "split"}


def read_source(source: DataSource, *, mirror: str | None = None) -> SourceRows:
    """Rows of ``source`` (at most ``source.limit`` records): local path, then mirror, then the hub."""
    try:
        resolved = resolve_data(source.id, data_dir=source.data_dir, split=source.split, mirror=mirror)
    except DataNotFound as err:
        raise DataSourceError(f"data source {source.id!r}: {err}") from None
    if resolved.is_local:
        assert resolved.path is not None
        return read_file(resolved.path, limit=source.limit)
    if source.id.startswith((".", "/", "~")) or source.id.endswith(_all_suffixes()):
        # Looks like a path: a typo must be a clear "not found", not a confusing hub download attempt.
        raise DataSourceError(f"data source {source.id!r}: file not found")
    return _read_hub(resolved, limit=source.limit, mirror=mirror)


def _all_suffixes() -> tuple[str, ...]:
    return FILE_SUFFIXES + tuple(s + ".gz" for s in FILE_SUFFIXES)


def read_file(path: str | Path, *, limit: int | None = None) -> SourceRows:
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"data file {path} not found")
    if path.is_dir():
        raise DataSourceError(f"data source {path} is a directory; point it (or the mirror entry) at a file")
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    kind = next((s for s in FILE_SUFFIXES if base.endswith(s)), None)
    if kind is None:
        raise DataSourceError(f"data file {path}: unknown format (expected {', '.join(_all_suffixes())})")
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if name.endswith(".gz") else raw
    except (OSError, EOFError) as err:
        raise DataSourceError(f"data file {path} cannot be read: {err}") from None
    out = SourceRows(rows=[], rows_read=0, origin={"path": str(path), "sha256": hashlib.sha256(raw).hexdigest()})
    records = {".jsonl": _jsonl_records, ".json": _json_records, ".csv": _csv_records,
               ".txt": _txt_records}[kind](data, path)
    for record in records:
        if limit is not None and out.rows_read >= limit:
            break
        out.rows_read += 1
        if isinstance(record, _Skip):
            out.skipped[record.reason] += 1
        elif not isinstance(record, dict):
            out.skipped["not_an_object"] += 1
        else:
            out.rows.append(record)
    return out


@dataclass(frozen=True)
class _Skip:
    reason: str


def _jsonl_records(data: bytes, path: Path) -> Iterator[Any]:
    # Decode line by line so that one bad line costs one row, not the file.
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError:
            yield _Skip("invalid_utf8")
            continue
        try:
            yield json.loads(text)
        except json.JSONDecodeError:
            yield _Skip("invalid_json")


def _json_records(data: bytes, path: Path) -> Iterator[Any]:
    # One document: there is no "line" to skip, so a broken file is an error.
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataSourceError(f"data file {path} is not valid UTF-8 JSON: {err}") from None
    if _is_taxonomy(doc):
        yield from _taxonomy_rows(doc, ())
        return
    if isinstance(doc, dict):
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataSourceError(f"data file {path}: expected a list of rows or an object holding exactly one "
                                  f"list, found list fields {lists or 'none'}")
        doc = doc[lists[0]]
    if not isinstance(doc, list):
        raise DataSourceError(f"data file {path}: expected a list of rows, got {type(doc).__name__}")
    yield from doc


def _is_taxonomy(doc: Any) -> bool:
    """{category: {subcategory: [str, ...]}} (any depth): every leaf a non-empty list of strings."""
    if isinstance(doc, list):
        return bool(doc) and all(isinstance(x, str) for x in doc)
    return isinstance(doc, dict) and bool(doc) and all(_is_taxonomy(v) for v in doc.values())


def _taxonomy_rows(doc: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if isinstance(doc, list):
        for text in doc:
            yield {"prompt": text, "category": "/".join(p.rstrip(":").strip() for p in path)}
        return
    for key, value in doc.items():
        yield from _taxonomy_rows(value, (*path, str(key)))


def _txt_records(data: bytes, path: Path) -> Iterator[Any]:
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            yield {"text": line.decode("utf-8").lstrip("\ufeff").strip()}
        except UnicodeDecodeError:
            yield _Skip("invalid_utf8")


def _csv_records(data: bytes, path: Path) -> Iterator[Any]:
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    text = data.decode("utf-8-sig", errors="surrogateescape")
    csv.field_size_limit(2**31 - 1)  # long generations exceed the 128 KiB default field limit
    try:
        for row in csv.DictReader(io.StringIO(text, newline="")):
            if None in row:
                yield _Skip("bad_csv_row")  # more fields than the header
            elif any(isinstance(v, str) and _SURROGATE.search(v) for v in row.values()):
                yield _Skip("invalid_utf8")
            else:
                yield row
    except csv.Error as err:
        raise DataSourceError(f"data file {path} is not valid CSV: {err}") from None


def _read_hub(resolved: ResolvedData, *, limit: int | None, mirror: str | None) -> SourceRows:
    where = f"{resolved.hub_id!r} (data_dir={resolved.data_dir!r}, split={resolved.split!r})"
    root = data_mirror_root(mirror)
    try:
        import datasets

        ds = datasets.load_dataset(resolved.hub_id, data_dir=resolved.data_dir, split=resolved.split)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        rows = [dict(r) for r in ds]
    except Exception as err:  # offline, unknown id, auth: all mean "not available here"
        mirror_note = f"the data mirror {root} has no entry for it" if root else "no data mirror is set"
        raise DataSourceError(
            f"data source {where} is not a local file, {mirror_note}, and the hub did not provide it "
            f"({type(err).__name__}: {str(err)[:300]}). {hub_access_hint(resolved.hub_id or '', 'dataset')} "
            f"Offline, set {DATA_MIRROR_ENV} (or data.mirror in the "
            f"config) to a folder laid out like shared/data, or add the id to its mirror.yaml.") from None
    return SourceRows(rows=rows, rows_read=len(rows),
                      origin={"hub": resolved.hub_id, "data_dir": resolved.data_dir, "split": resolved.split})
