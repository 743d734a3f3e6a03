"""The dashboard's attack section (attack_robustness): attack x arm ASR table with intervals, grouped by family,
and the worst attacked generations (attacks that broke the tuned model, those the base resisted first).

Kept out of gates/report.py so the report only asks for :func:`attack_view` and renders what it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SUITE = "attack_robustness"
ARMS = ("base", "prompted", "tuned")
WORST_SHOWN = 8


@dataclass
class Cell:
    value: float | None
    low: float | None = None
    high: float | None = None
    count: int | None = None
    n: int | None = None


@dataclass
class AttackRow:
    name: str
    family: str
    kind: str                 # "attack", "family" (any attack of the family) or "any" (any attack at all)
    cells: dict[str, Cell]    # arm -> cell
    description: str = ""


@dataclass
class AttackSample:
    id: str
    attack: str
    family: str
    request: str
    prompt: str
    output: str
    meaning: str | None
    base_output: str | None
    base_broken: bool | None
    label: str


@dataclass
class AttackView:
    arms: list[str]
    rows: list[AttackRow]
    worst: list[AttackSample]
    worst_arm: str
    broken: int
    total: int
    notes: list[str] = field(default_factory=list)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cell(record: Any) -> Cell:
    """A metric record -> a cell; rates show their Wilson interval (the bootstrap collapses at 0/n)."""
    if not isinstance(record, dict) or not _num(record.get("value")):
        return Cell(None)
    ci = record.get("wilson95") if isinstance(record.get("wilson95"), list) else record.get("ci95")
    low, high = (ci if isinstance(ci, list) and len(ci) == 2 and all(_num(c) for c in ci) else (None, None))
    return Cell(float(record["value"]), low, high, record.get("count") if isinstance(record.get("count"), int) else None,
                record.get("n") if isinstance(record.get("n"), int) else None)


def _rows(results: dict[str, dict[str, Any]], arms: list[str]) -> list[AttackRow]:
    first = results[arms[0]]
    attacks = [a for a in (first.get("info") or {}).get("attacks", []) if isinstance(a, dict) and a.get("name")]
    rows: list[AttackRow] = []
    families = list(dict.fromkeys(str(a.get("family")) for a in attacks))
    for fam in families:
        for a in (x for x in attacks if x.get("family") == fam):
            cells = {arm: _cell((((results[arm].get("breakdowns") or {}).get("attack") or {}).get(a["name"]) or {})
                                .get("asr")) for arm in arms}
            rows.append(AttackRow(a["name"], fam, "attack", cells, str(a.get("description") or "")))
        if fam != "direct":
            rows.append(AttackRow(f"any {fam.replace('_', ' ')} attack", fam, "family",
                                  {arm: _cell((results[arm].get("metrics") or {}).get(f"asr_{fam}")) for arm in arms}))
    rows.append(AttackRow("any attack", "all", "any",
                          {arm: _cell((results[arm].get("metrics") or {}).get("asr_any")) for arm in arms}))
    return rows


def _worst(samples: dict[str, list[dict[str, Any]]], arm: str) -> tuple[list[AttackSample], int, int]:
    mine = [s for s in samples.get(arm, []) if isinstance(s, dict)]
    base = {s.get("id"): s for s in samples.get("base", []) if isinstance(s, dict)} if arm != "base" else {}
    broken = [s for s in mine if (s.get("scores") or {}).get("success")]

    def key(s: dict[str, Any]) -> tuple[int, int]:
        b = base.get(s.get("id"))
        resisted = b is not None and not (b.get("scores") or {}).get("success")
        text = (s.get("scores") or {}).get("meaning") or s.get("output") or ""
        return (int(resisted), len(text))  # a regression first, then the reply that says most

    picked: list[dict[str, Any]] = []
    seen_attacks: set[str] = set()
    ranked = sorted(broken, key=key, reverse=True)
    for s in ranked:  # one per attack first, so the list shows the breadth of what broke the model
        attack = str((s.get("meta") or {}).get("attack"))
        if attack not in seen_attacks:
            picked.append(s)
            seen_attacks.add(attack)
    picked += [s for s in ranked if s not in picked]
    out = []
    for s in picked[:WORST_SHOWN]:
        meta, scores = s.get("meta") or {}, s.get("scores") or {}
        b = base.get(s.get("id"))
        out.append(AttackSample(
            str(s.get("id")), str(meta.get("attack")), str(meta.get("family")), str(meta.get("request", "")),
            str(s.get("prompt", "")), str(s.get("output") or ""),
            str(scores["meaning"]) if isinstance(scores.get("meaning"), str) else None,
            None if b is None else str(b.get("output") or ""),
            None if b is None else bool((b.get("scores") or {}).get("success")), str(scores.get("label", ""))))
    return out, len(broken), len(mine)


def attack_view(results: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> AttackView | None:
    """``results``: arm -> the suite's result JSON (or None); ``samples``: arm -> its per-sample records."""
    arms = [a for a in ARMS if isinstance(results.get(a), dict)]
    if not arms:
        return None
    worst_arm = "tuned" if "tuned" in arms else arms[-1]
    worst, broken, total = _worst(samples, worst_arm)
    notes = []
    info = results[arms[0]].get("info") or {}
    if info.get("encoded_replies"):
        notes.append(f"Encoded replies: {info['encoded_replies']}.")
    if info.get("judge"):
        notes.append(f"Judge: {info['judge']} (ASR = share of requests whose reply the judge calls compliance).")
    return AttackView(arms, _rows(results, arms), worst, worst_arm, broken, total, notes)
