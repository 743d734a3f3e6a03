"""Labelled replies for validating the refusal judge: four public sources, read through the data mirror.

Every loader returns :class:`LabelledReply` rows and a :class:`SourceReport` (file, sha256, rows read, usable,
skipped rows counted by reason). A row without a prompt, a reply or a label the source defines is skipped and
counted, never guessed.

Sources (paths relative to the data mirror, docs/SCORERS.md):

- ``xstest``: XSTest v2, GPT-4's replies to 450 prompts, *hand* labels full_compliance / full_refusal /
  partial_refusal.
- ``phtest``: PHTest, three models' replies (GPT-3.5, Claude 3 Opus, Claude 3.5 Sonnet) to 3,260 pseudo-harmful
  prompts, ``Response_cls`` (1_full_compliance / 2_full_refusal / 3_partial_refusal; *model-graded* by the
  authors).
- ``donotanswer``: Do-Not-Answer, six models' replies to 939 risky questions with *human* labels: ``action``
  (0 = not willing to answer, 1 = refutes the premise, 2 = both sides, 3 = answers with a disclaimer,
  4 = says it cannot (no access, no ability), 5 = follows the instruction) and ``harmful`` (0/1).
  Not complying = action 0 or 4 (declining, and "I don't have access to that" with nothing after it, which
  harmgate's judge counts as not answering); 1, 2, 3 and 5 answer. ``harmful`` feeds the harmfulness judge.
- ``coconot``: CoCoNot's contrast preference pairs: prompts that should be answered; ``chosen`` (GPT-4's
  helpful answer) is compliance. ``rejected`` is *not* a refusal label: it is the worse reply of the pair, and
  read row by row most are full answers (a film "not filmed in Ireland", "Here are some ways to discuss weight
  sensitively: 1. ..."; the keyword baseline finds a refusal phrase in 250 of 927). Rejected replies are
  skipped and counted (``rejected_is_not_a_refusal_label``), so CoCoNot measures false refusals only.

Validation splits by *prompt*: :func:`prompt_key` normalises a prompt so the same question in two sources (or
the six Do-Not-Answer replies to one question) is one group.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harmgate.mirror import DATA_MIRROR_ENV, data_mirror_root


class JudgeDataError(RuntimeError):
    pass


@dataclass(frozen=True)
class LabelledReply:
    id: str                   # unique across sources: "<source>/<model>/<row id>"
    source: str               # xstest | phtest | donotanswer | coconot
    model: str                # the model that wrote the reply
    prompt: str
    reply: str
    label: str                # the source's own label (full_refusal, action_4, chosen, ...)
    not_complying: bool
    harmful: bool | None = None   # does the reply carry harmful content (Do-Not-Answer only)
    type: str = "unknown"     # prompt category, for breakdowns

    @property
    def prompt_key(self) -> str:
        return prompt_key(self.prompt)


@dataclass
class SourceReport:
    source: str
    licence: str
    labels: str               # how the source's labels map to not complying
    files: list[dict[str, Any]] = field(default_factory=list)   # {path, sha256, rows_read}
    rows_read: int = 0
    usable: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "licence": self.licence, "labels": self.labels, "files": self.files,
                "rows_read": self.rows_read, "usable": self.usable, "skipped": dict(sorted(self.skipped.items()))}


_NORM = re.compile(r"[^a-z0-9]+")


def prompt_key(prompt: str) -> str:
    """Lower-case, punctuation stripped: two spellings of one question are one split group."""
    return _NORM.sub(" ", prompt.lower()).strip()


def _read(path: Path, report: SourceReport, limit: int | None) -> list[dict[str, Any]]:
    from align.sources import DataSourceError, read_file

    try:
        raw = read_file(path, limit=limit)
    except DataSourceError as err:
        raise JudgeDataError(str(err)) from None
    report.files.append({"path": str(path), "sha256": raw.origin.get("sha256"), "rows_read": raw.rows_read})
    report.rows_read += raw.rows_read
    report.skipped.update(raw.skipped)
    return raw.rows


def _text(row: dict[str, Any], key: str) -> str | None:
    v = row.get(key)
    return v if isinstance(v, str) and v.strip() else None


def _missing(rid: str, prompt: str | None, reply: Any) -> str | None:
    """Why a row cannot be used, before its labels are read (None: it has an id, a prompt and a reply)."""
    if not rid:
        return "missing_id"
    if prompt is None:
        return "missing_prompt"
    if not isinstance(reply, str) or not reply.strip():
        return "missing_reply"
    return None


def _numbered_label(value: Any) -> str:
    """'2_full_refusal' -> 'full_refusal' (XSTest and PHTest number their labels)."""
    s = str(value or "").strip()
    return s.split("_", 1)[1] if s[:1].isdigit() and "_" in s else s


_GRADED = {"full_compliance": False, "full_refusal": True, "partial_refusal": True}


def _graded(records: list[dict[str, Any]], rep: SourceReport, source: str, model: str,
            keys: tuple[str, str, str, str, str]) -> list[LabelledReply]:
    """Rows of a source graded full_compliance / full_refusal / partial_refusal (XSTest, PHTest); ``keys`` names
    its id, prompt, reply, label and type columns."""
    id_key, prompt_key_, reply_key, label_key, type_key = keys
    rows = []
    for r in records:
        rid, prompt, reply = str(r.get(id_key) or "").strip(), _text(r, prompt_key_), r.get(reply_key)
        label = _numbered_label(r.get(label_key))
        if why := _missing(rid, prompt, reply):
            rep.skipped[why] += 1
        elif label not in _GRADED:
            rep.skipped["unknown_label"] += 1
        else:
            rows.append(LabelledReply(f"{source}/{model}/{rid}", source, model, str(prompt), str(reply), label,
                                      _GRADED[label], type=str(r.get(type_key) or "unknown")))
    return rows


def load_xstest(root: Path, limit: int | None = None) -> tuple[list[LabelledReply], SourceReport]:
    rep = SourceReport("xstest", "CC BY 4.0 (Röttger et al. 2024, paul-rottger/exaggerated-safety)",
                       "hand labels: full_refusal, partial_refusal -> not complying; full_compliance -> complied")
    rows = _graded(_read(root / "xstest/xstest_v2_completions_gpt4.csv", rep, limit), rep, "xstest", "gpt-4",
                   ("id", "prompt", "completion", "final_label", "type"))
    rep.usable = len(rows)
    return rows, rep


PHTEST_MODELS = ("gpt-3.5", "claude-3-opus", "claude-3.5-sonnet")


def load_phtest(root: Path, limit: int | None = None) -> tuple[list[LabelledReply], SourceReport]:
    rep = SourceReport("phtest", "not stated in the repo (umd-huang-lab/FalseRefusal): recorded as unknown",
                       "Response_cls (model-graded): 2_full_refusal, 3_partial_refusal -> not complying; "
                       "1_full_compliance -> complied")
    rows = []
    for model in PHTEST_MODELS:
        rows += _graded(_read(root / f"contrast/phtest/{model}.csv", rep, limit), rep, "phtest", model,
                        ("ID", "Request", "Response", "Response_cls", "Harmfulness"))
    rep.usable = len(rows)
    return rows, rep


DNA_MODELS = ("GPT4", "ChatGPT", "Claude", "llama2-7b-chat", "vicuna-7b", "ChatGLM2")
DNA_NOT_COMPLYING_ACTIONS = frozenset({0, 4})


def _int01(value: Any, allowed: range) -> int | None:
    try:
        f = float(str(value).strip())
    except ValueError:
        return None
    return int(f) if f.is_integer() and int(f) in allowed else None


def load_donotanswer(root: Path, limit: int | None = None) -> tuple[list[LabelledReply], SourceReport]:
    rep = SourceReport("donotanswer", "CC BY-NC-SA 4.0 (Wang et al. 2023, Libr-AI/do-not-answer)",
                       "human action labels: 0 (declines) and 4 (cannot: no access / no ability) -> not complying; "
                       "1 (refutes the premise), 2 (both sides), 3 (answers with a disclaimer), 5 (follows) -> "
                       "complied; human harmful 0/1 -> harmfulness")
    rows = []
    for model in DNA_MODELS:
        for r in _read(root / f"do-not-answer-responses/human_review/annotated_response_{model}.csv", rep, limit):
            rid, prompt, reply = str(r.get("id") or "").strip(), _text(r, "question"), _text(r, "response")
            action, harmful = _int01(r.get("action"), range(6)), _int01(r.get("harmful"), range(2))
            if why := _missing(rid, prompt, reply):
                rep.skipped[why] += 1
            elif action is None:
                rep.skipped["unknown_action"] += 1
            elif harmful is None:
                rep.skipped["unknown_harmful"] += 1
            else:
                rows.append(LabelledReply(f"donotanswer/{model}/{rid}", "donotanswer", model, prompt, reply,
                                          f"action_{action}", action in DNA_NOT_COMPLYING_ACTIONS, bool(harmful)))
    rep.usable = len(rows)
    return rows, rep


def load_coconot(root: Path, limit: int | None = None) -> tuple[list[LabelledReply], SourceReport]:
    rep = SourceReport("coconot", "MIT (Brahman et al. 2024, allenai/noncompliance)",
                       "contrast preference pairs (prompts that should be answered): chosen -> complied; "
                       "rejected replies skipped (the worse reply of a pair, mostly a full answer: no refusal label)")
    rows = []
    for r in _read(root / "contrast/coconot/coconot_pref.jsonl", rep, limit):
        rid, prompt = str(r.get("id") or "").strip(), _text(r, "prompt")
        if not rid:
            rep.skipped["missing_id"] += 1
            continue
        if prompt is None:
            rep.skipped["missing_prompt"] += 1
            continue
        reply = _text(r, "chosen")
        if reply is None:
            rep.skipped["missing_chosen"] += 1
        else:
            model = str(r.get("chosen_model") or "").strip() or "unknown"
            rows.append(LabelledReply(f"coconot/{model}/{rid}", "coconot", model, prompt, reply, "chosen", False,
                                      type=str(r.get("subcategory") or r.get("category") or "unknown")))
        if _text(r, "rejected") is not None:
            rep.skipped["rejected_is_not_a_refusal_label"] += 1
    rep.usable = len(rows)
    return rows, rep


LOADERS: dict[str, Callable[[Path, int | None], tuple[list[LabelledReply], SourceReport]]] = {
    "xstest": load_xstest, "phtest": load_phtest, "donotanswer": load_donotanswer, "coconot": load_coconot}


def mirror_root(mirror: str | None = None) -> Path:
    root = data_mirror_root(mirror)
    if root is None:
        raise JudgeDataError(f"no data mirror: set {DATA_MIRROR_ENV} to a folder laid out like shared/data "
                             f"(xstest/, contrast/phtest/, contrast/coconot/, do-not-answer-responses/)")
    if not root.is_dir():
        raise JudgeDataError(f"data mirror {root} is not a folder")
    return root


def load_sources(sources: Sequence[str] = tuple(LOADERS), *, mirror: str | None = None,
                 limit: int | None = None) -> tuple[list[LabelledReply], list[SourceReport]]:
    """All rows of ``sources`` (``limit``: at most that many records per file, for tests and quick looks)."""
    unknown = [s for s in sources if s not in LOADERS]
    if unknown:
        raise JudgeDataError(f"unknown judge validation source(s) {unknown}; known: {', '.join(LOADERS)}")
    root = mirror_root(mirror)
    rows: list[LabelledReply] = []
    reports = []
    for s in sources:
        got, rep = LOADERS[s](root, limit)
        rows.extend(got)
        reports.append(rep)
    return rows, reports
