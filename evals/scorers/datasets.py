"""Labelled text for the toxicity classifier: the shared machinery (sources, counted skips, dedup, the seeded
group-aware split) and the two original sources, Davidson tweets and ToxiGen statements. The hate-speech sets
(DynaHate, HateXplain, ...) are read in ``hate_sources.py``; ``corpus.py`` lists them all and samples them.

Each source is named by its hub id for connected users and found offline in the data mirror
(``HARMGATE_DATA_MIRROR``) by the relative path it has in ``../shared/data``; a local path works too.
Rows that cannot be used are counted under a reason and skipped, never silently dropped.

Labels (``None``: this source says nothing about that label, so the loss and the AUC skip it there):

==================  ============================================  ===============================
label               Davidson tweets                               ToxiGen statements
==================  ============================================  ===============================
``toxicity``        hate speech: 1, neither: 0, offensive: None   hateful: 1, neutral: 0
``identity_attack`` hate speech: 1, otherwise 0                   hateful: 1, neutral: 0
``insult``          hate speech or offensive: 1, neither: 0       neutral: 0, hateful: None
``threat``          neither: 0                                    neutral: 0
==================  ============================================  ===============================

harmgate's ``toxicity`` is *hateful or threatening* text (docs/SCORERS.md says why): Davidson's "offensive" class is
mostly profanity and in-group slang, which a hate detector must not learn to flag, so it says nothing about
``toxicity`` and teaches ``insult`` only.

The split is *group-aware*: an example's side is a seeded hash of its normalised text, so a statement that
ToxiGen repeats across many prompt lines (or a retweeted tweet) is deduplicated and can never sit on both sides.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harmgate.mirror import DATA_MIRROR_ENV, data_mirror_root

LABELS: tuple[str, ...] = ("toxicity", "identity_attack", "insult", "threat")


class ToxicityDataError(RuntimeError):
    """A source that cannot be read at all; the message names the source and where it looked."""


@dataclass(frozen=True)
class DataRef:
    """Where a source lives: a hub id for connected users, a path inside the offline mirror."""

    key: str
    hub_id: str | None       # None: read only from the mirror or a local path
    mirror_path: str
    licence: str
    hub_name: str | None = None
    hub_split: str = "train"


DAVIDSON = DataRef("davidson", "tdavidson/hate_speech_offensive", "davidson-hate-speech/labeled_data.csv", "MIT")
TOXIGEN = DataRef("toxigen", "toxigen/toxigen-data", "toxigen/prompts", "MIT", hub_name="train")


@dataclass(frozen=True)
class Example:
    text: str
    labels: dict[str, float | None]
    source: str
    group: str   # normalised text: identical texts share a side of the split
    # the groups whose side of the split this example must share (empty: its own group). A text built from other
    # texts (a counter-reply quoting a hateful post) sits on their side, or on neither when they fall apart:
    # otherwise a held-out text would be trained on inside another.
    side_keys: tuple[str, ...] = ()


@dataclass
class SourceReport:
    source: str
    origin: dict[str, Any]
    licence: str
    rows_read: int = 0
    usable: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "origin": self.origin, "licence": self.licence, "rows_read": self.rows_read,
                "usable": self.usable, "skipped": dict(sorted(self.skipped.items()))}


_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def locate(ref: DataRef, override: str | None = None, mirror: str | None = None) -> Path | str:
    """A local path for ``ref`` (override, then the mirror), or its hub id when neither has it."""
    if override:
        p = Path(override).expanduser()
        if p.exists():
            return p
        root = data_mirror_root(mirror)
        if root is not None and (root / override).exists():
            return root / override
        if override.startswith((".", "/", "~")) or override.endswith((".csv", ".txt")):
            raise ToxicityDataError(f"{ref.key} data {override!r}: no such file or folder"
                                    + (f" (nor under the mirror {root})" if root else ""))
        return override
    root = data_mirror_root(mirror)
    if root is not None:
        p = root / ref.mirror_path
        if not p.exists():
            raise ToxicityDataError(f"{ref.key} data: the mirror {root} has no {ref.mirror_path}")
        return p
    if ref.hub_id is None:
        raise ToxicityDataError(f"{ref.key} data: no data mirror is set ({DATA_MIRROR_ENV}) and this source has no "
                                f"hub copy harmgate reads; point {DATA_MIRROR_ENV} at a folder laid out like "
                                f"shared/data (with {ref.mirror_path}) or pass a local path")
    return ref.hub_id


def labels(toxicity: float | None = None, identity_attack: float | None = None, insult: float | None = None,
           threat: float | None = None) -> dict[str, float | None]:
    """A label dict over LABELS (None: the source says nothing about that label)."""
    return {"toxicity": toxicity, "identity_attack": identity_attack, "insult": insult, "threat": threat}


CLEAN = labels(0.0, 0.0, 0.0, 0.0)   # a source's "neither hateful nor offensive": no label applies


def _hub_rows(ref: DataRef, hub_id: str) -> list[dict[str, Any]]:
    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(hub_id, ref.hub_name, split=ref.hub_split)]
    except Exception as err:  # offline, gated, renamed: all mean "not available here"
        raise ToxicityDataError(
            f"{ref.key} data: {hub_id!r} is not a local file and the hub did not provide it ({type(err).__name__}: "
            f"{str(err)[:200]}). Offline, set {DATA_MIRROR_ENV} to a folder laid out like shared/data "
            f"(with {ref.mirror_path}) or pass a local path.") from None


def _davidson_example(row: dict[str, Any]) -> Example | str:
    """One tweet, or the reason it is skipped."""
    text = row.get("tweet")
    if not isinstance(text, str) or not text.strip():
        return "missing_text"
    try:
        cls = int(str(row.get("class", "")).strip())
    except ValueError:
        return "bad_class"
    if cls not in (0, 1, 2):
        return "bad_class"
    lab = {0: labels(1.0, 1.0, 1.0), 1: labels(None, 0.0, 1.0), 2: CLEAN}[cls]
    return Example(text.strip(), lab, DAVIDSON.key, normalise(text))


def _toxigen_example(text: str, hateful: bool) -> Example:
    lab = labels(1.0, 1.0) if hateful else CLEAN
    return Example(text, lab, TOXIGEN.key, normalise(text))


def read_davidson(where: Path | str) -> tuple[list[Example], SourceReport]:
    """Davidson et al. (2017): ``class`` 0 hate speech, 1 offensive, 2 neither; ``tweet``."""
    if isinstance(where, Path):
        from align.sources import DataSourceError, read_file

        try:
            raw = read_file(where)
        except DataSourceError as err:
            raise ToxicityDataError(f"davidson data: {err}") from None
        report = SourceReport(DAVIDSON.key, raw.origin, DAVIDSON.licence, raw.rows_read, skipped=Counter(raw.skipped))
        rows = raw.rows
    else:
        rows = _hub_rows(DAVIDSON, where)
        report = SourceReport(DAVIDSON.key, {"hub": where}, DAVIDSON.licence, len(rows))
    examples = []
    for row in rows:
        ex = _davidson_example(row)
        if isinstance(ex, str):
            report.skipped[ex] += 1
        else:
            examples.append(ex)
    return _dedup(examples, report)


def _toxigen_file_label(path: Path) -> bool | None:
    if path.name.startswith("hate_"):
        return True
    if path.name.startswith("neutral_"):
        return False
    return None


def _statements(line: str) -> Iterable[str]:
    """A ToxiGen prompt line: ``- s1\\n- s2\\n-`` with literal backslash-n separators."""
    for part in line.replace("\\n", "\n").split("\n"):
        part = part.strip()
        if part.startswith("-"):
            part = part[1:].strip()
        yield part


def read_toxigen(where: Path | str) -> tuple[list[Example], SourceReport]:
    """ToxiGen (Hartvigsen et al. 2022): the prompt files (offline) or ``toxigen/toxigen-data`` (hub)."""
    if isinstance(where, str):
        rows = _hub_rows(TOXIGEN, where)
        report = SourceReport(TOXIGEN.key, {"hub": where, "name": TOXIGEN.hub_name}, TOXIGEN.licence, len(rows))
        found = []
        for row in rows:
            text, label = row.get("generation") or row.get("text"), row.get("prompt_label", row.get("label"))
            if not isinstance(text, str) or not text.strip():
                report.skipped["missing_text"] += 1
            elif label not in (0, 1):
                report.skipped["bad_label"] += 1
            else:
                found.append(_toxigen_example(text.strip(), label == 1))
        return _dedup(found, report)
    files = sorted(where.glob("*.txt")) if where.is_dir() else [where]
    files = [f for f in files if _toxigen_file_label(f) is not None]
    if not files:
        raise ToxicityDataError(f"toxigen data: no hate_*.txt / neutral_*.txt files in {where}")
    digest = hashlib.sha256()
    report = SourceReport(TOXIGEN.key, {"path": str(where), "files": len(files)}, TOXIGEN.licence)
    found = []
    for f in files:
        hateful = bool(_toxigen_file_label(f))
        data = f.read_bytes()
        digest.update(f.name.encode() + b"\0" + data)
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            report.rows_read += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                report.skipped["invalid_utf8"] += 1
                continue
            statements = [s for s in _statements(line) if len(s) >= 3]
            if not statements:
                report.skipped["no_statement"] += 1
            found.extend(_toxigen_example(s, hateful) for s in statements)
    report.origin["sha256"] = digest.hexdigest()
    return _dedup(found, report)


def _dedup(examples: list[Example], report: SourceReport) -> tuple[list[Example], SourceReport]:
    """One example per normalised text; a text with two different labellings is dropped as conflicting."""
    by_group: dict[str, Example] = {}
    conflicting: set[str] = set()
    duplicates = 0
    for ex in examples:
        seen = by_group.get(ex.group)
        if seen is None:
            by_group[ex.group] = ex
        elif seen.labels != ex.labels:
            conflicting.add(ex.group)
        else:
            duplicates += 1
    for g in conflicting:
        del by_group[g]
    report.skipped["conflicting_labels"] += len(conflicting)
    report.skipped = Counter({k: v for k, v in report.skipped.items() if v})
    kept = list(by_group.values())
    report.usable = len(kept)
    report.origin["unique_texts"] = len(kept)
    report.origin["duplicates_merged"] = duplicates  # repeats of a text already kept (ToxiGen reuses statements)
    return kept, report


def heldout_side(group: str, seed: int, fraction: float) -> bool:
    """True when this group is held out: a seeded hash, so the side never depends on sampling or order."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{group}".encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def example_side(e: Example, seed: int, fraction: float) -> bool | None:
    """True: held out; False: training side; None: built from texts on both sides, so on neither."""
    sides = {heldout_side(k, seed, fraction) for k in (e.side_keys or (e.group,))}
    return sides.pop() if len(sides) == 1 else None


@dataclass
class Split:
    train: list[Example]
    heldout: list[Example]


def split_and_sample(examples: list[Example], *, seed: int, heldout_fraction: float,
                     train_limit: int | None, heldout_limit: int | None) -> Split:
    """Group-aware split first (fixed by the seed), then seeded samples of each side."""
    sides = [example_side(e, seed, heldout_fraction) for e in examples]  # None: on neither side
    train = [e for e, side in zip(examples, sides) if side is False]
    held = [e for e, side in zip(examples, sides) if side is True]
    rng = random.Random(seed)
    train.sort(key=lambda e: e.group)
    held.sort(key=lambda e: e.group)
    rng.shuffle(train)
    rng.shuffle(held)
    return Split(train[:train_limit] if train_limit else train, held[:heldout_limit] if heldout_limit else held)
