"""Readers for the hate-speech sets in the data mirror's ``hate/`` folder (each folder's PROVENANCE.txt says where
it came from). Every reader returns ``(examples, SourceReport)``: rows that cannot be used are counted by reason.

Which source teaches which label (``-``: that source says nothing, so the loss and the AUC skip it there). The
"clean" class of a source (not hateful *and* not offensive) is 0 for every label.

=============  ==============================  ===================  ==============================  ==================
source         toxicity (= hateful/threat)     identity_attack      insult                          threat
=============  ==============================  ===================  ==============================  ==================
dynahate       hate 1, nothate 0               same                 -                               -
hatexplain     hate 1, normal 0, offensive -   hate 1, else 0       hate/offensive 1, normal 0      normal 0
implicit_hate  implicit/explicit 1, not 0      same                 -                               stg2 threatening 1,
                                                                                                    other stg2 0
hatemoji       label_gold                      label_gold           -                               type threatening
conan          hate speech 1, counter 0        same                 counter-narrative 0             counter 0
conan_quoted   counter-reply quoting hate 0    same                 -                               -
cmsb_sexism    sexist 1, not (incl. edits) 0   same                 -                               -
stormfront     hate 1, noHate 0                same                 -                               noHate 0
ethos          isHate >= 0.5                   same                 -                               violence >= 0.5
olid           NOT 0, OFF untargeted 0         NOT/UNT/IND 0        targeted 1, NOT/UNT 0           NOT 0
sbic           offensive + a target group: 1   same                 offensive 1                     -
=============  ==============================  ===================  ==============================  ==================

Hub copies of these sets are scattered or unofficial, so they are read from the mirror (or a local path) only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable

from evals.scorers.datasets import (CLEAN, DataRef, Example, SourceReport, ToxicityDataError, _dedup, labels,
                                    normalise)

DYNAHATE = DataRef("dynahate", None, "hate/dynahate", "DynaHate terms (research); copy via MIT repo")
HATEXPLAIN = DataRef("hatexplain", None, "hate/hatexplain/092-HateXplain.csv", "MIT")
IMPLICIT_HATE = DataRef("implicit_hate", None, "hate/implicit_hate", "MIT")
HATEMOJI = DataRef("hatemoji", None, "hate/hatemojibuild", "CC-BY-4.0")
CONAN = DataRef("conan", None, "hate/conan", "research use (no licence file)")
CONAN_QUOTED = DataRef("conan_quoted", None, "hate/conan", "research use (no licence file)")
CMSB = DataRef("cmsb_sexism", None, "hate/cmsb_sexism/sexism_data.csv", "GESIS research licence")
STORMFRONT = DataRef("stormfront", None, "hate/stormfront/stormfront_hate.csv", "CC-BY-SA-3.0")
ETHOS = DataRef("ethos", None, "hate/ethos", "GPL-3.0")
OLID = DataRef("olid", None, "hate/olid/olid-training-v1.0.tsv", "research use (no licence file)")
SBIC = DataRef("sbic", None, "hate/sbic_partial", "CC-BY-4.0")


class _Reader:
    """Collects examples and skip reasons for one source; hashes every file it reads."""

    def __init__(self, ref: DataRef, where: Path) -> None:
        if not isinstance(where, Path):
            raise ToxicityDataError(f"{ref.key} data: {where!r} is not a local path (no hub copy is read)")
        if not where.exists():
            raise ToxicityDataError(f"{ref.key} data: {where} does not exist")
        self.ref = ref
        self.where = where
        self.report = SourceReport(ref.key, {"path": str(where), "files": {}}, ref.licence)
        self.examples: list[Example] = []

    def file(self, name: str) -> Path:
        p = self.where / name if self.where.is_dir() else self.where
        if not p.is_file():
            raise ToxicityDataError(f"{self.ref.key} data: {p} is missing")
        return p

    def text(self, path: Path) -> str:
        data = path.read_bytes()
        self.report.origin["files"][path.name] = hashlib.sha256(data).hexdigest()
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        if bad:
            self.report.origin.setdefault("invalid_utf8_bytes_replaced", 0)
            self.report.origin["invalid_utf8_bytes_replaced"] += bad
        return text

    def rows(self, path: Path, delimiter: str = ",") -> Iterable[dict[str, Any]]:
        try:
            reader = csv.DictReader(io.StringIO(self.text(path), newline=""), delimiter=delimiter)
            for row in reader:
                self.report.rows_read += 1
                yield row
        except csv.Error as err:
            raise ToxicityDataError(f"{self.ref.key} data: {path} is not valid CSV ({err})") from None

    def add(self, text: Any, lab: dict[str, float | None] | str, min_chars: int = 3) -> None:
        """Keep one example, or count why not (``lab`` a string: the skip reason)."""
        if isinstance(lab, str):
            self.report.skipped[lab] += 1
            return
        if not isinstance(text, str) or len(text.strip()) < min_chars:
            self.report.skipped["missing_text"] += 1
            return
        text = text.strip()
        self.examples.append(Example(text, lab, self.ref.key, normalise(text)))

    def done(self) -> tuple[list[Example], SourceReport]:
        return _dedup(self.examples, self.report)


def _binary(value: Any) -> float | None:
    v = str(value).strip().lower()
    if v in ("1", "true", "1.0"):
        return 1.0
    if v in ("0", "false", "0.0"):
        return 0.0
    return None


def _hateful(y: float) -> dict[str, float | None]:
    return labels(y, y)


def read_dynahate(where: Path) -> tuple[list[Example], SourceReport]:
    """DynaHate (Vidgen et al. 2021), the official train and test rows: ``text,label`` (1 hate, 0 nothate).
    "nothate" includes the adversarial contrast edits and non-hateful abuse, which is why it matters here."""
    r = _Reader(DYNAHATE, where)
    for name in ("dynahate_train.csv", "dynahate_test.csv"):
        for row in r.rows(r.file(name)):
            y = _binary(row.get("label"))
            r.add(row.get("text"), "bad_label" if y is None else _hateful(y))
    return r.done()


def read_hatexplain(where: Path) -> tuple[list[Example], SourceReport]:
    """HateXplain (MBIB's flattening): ``category`` 0 normal, 1 hate speech, 2 offensive, 3 no majority."""
    r = _Reader(HATEXPLAIN, where)
    by_category = {"0": CLEAN, "1": labels(1.0, 1.0, 1.0), "2": labels(None, 0.0, 1.0), "3": "no_majority"}
    for row in r.rows(r.file("092-HateXplain.csv")):
        lab = by_category.get(str(row.get("category", "")).strip(), "bad_label")
        r.add(row.get("text"), lab)
    return r.done()


def _clean_tsv_post(text: Any) -> Any:
    """Implicit Hate's posts carry CSV-quoting debris (``"  "" : ... "" "" ""``)."""
    if not isinstance(text, str):
        return text
    return re.sub(r'\s+', " ", text.replace('""', '"').strip().strip('"').strip()).strip('" ').strip()


def read_implicit_hate(where: Path) -> tuple[list[Example], SourceReport]:
    """Implicit Hate Corpus (ElSherief et al. 2021): stage 1 ``post, class`` (not_hate / implicit_hate /
    explicit_hate); stage 2's fine-grained class of implicit posts gives ``threat`` (threatening 1, other 0)."""
    r = _Reader(IMPLICIT_HATE, where)
    threatening: dict[str, float] = {}
    for row in r.rows(r.file("implicit_hate_v1_stg2_posts.tsv"), delimiter="\t"):
        post = _clean_tsv_post(row.get("post"))
        if isinstance(post, str) and row.get("implicit_class"):
            threatening[normalise(post)] = float(row["implicit_class"] == "threatening")
    stage2_rows = r.report.rows_read
    r.report.rows_read = 0
    by_class = {"not_hate": CLEAN, "implicit_hate": labels(1.0, 1.0), "explicit_hate": labels(1.0, 1.0)}
    for row in r.rows(r.file("implicit_hate_v1_stg1_posts.tsv"), delimiter="\t"):
        post = _clean_tsv_post(row.get("post"))
        lab = by_class.get(str(row.get("class", "")).strip(), "bad_label")
        if isinstance(lab, dict) and isinstance(post, str) and lab["toxicity"] == 1.0:
            lab = {**lab, "threat": threatening.get(normalise(post))}
        r.add(post, lab)
    r.report.origin["stage2_rows"] = stage2_rows
    r.report.origin["threat_labelled"] = sum(1 for e in r.examples if e.labels["threat"] is not None)
    return r.done()


_SKIN_TONE = re.compile("[\U0001F3FB-\U0001F3FF\uFE0F\u200D]")


def _name_emoji(text: str) -> tuple[str, int]:
    """Each emoji replaced by its Unicode name in brackets ("🔪" -> "(hocho)"): MiniLM's vocabulary has no emoji, so
    the raw text would read "[UNK]" wherever HatemojiBuild's meaning sits. Returns the text and the count."""
    out, n = [], 0
    for ch in _SKIN_TONE.sub("", text):
        if unicodedata.category(ch) == "So" and ord(ch) > 0x2000:
            out.append(f" ({unicodedata.name(ch, 'symbol').lower()}) ")
            n += 1
        else:
            out.append(ch)
    return re.sub(r"\s+", " ", "".join(out)).strip(), n


def read_hatemoji(where: Path) -> tuple[list[Example], SourceReport]:
    """HatemojiBuild (Kirk et al. 2022): adversarial emoji hate with perturbed non-hateful twins; ``label_gold``,
    ``type`` (threateninglanguage -> threat). Emoji are spelled out by name (see ``_name_emoji``)."""
    r = _Reader(HATEMOJI, where)
    named = 0
    for name in ("train.csv", "validation.csv", "test.csv"):
        for row in r.rows(r.file(name)):
            y = _binary(row.get("label_gold"))
            text = row.get("text")
            if isinstance(text, str):
                text, n = _name_emoji(text)
                named += n > 0
            lab: dict[str, float | None] | str = "bad_label"
            if y is not None:
                lab = {**_hateful(y), "threat": float(y == 1.0 and row.get("type") == "threateninglanguage")}
            r.add(text, lab)
    r.report.origin["rows_with_emoji_named"] = named
    return r.done()


def read_conan(where: Path) -> tuple[list[Example], SourceReport]:
    """CONAN family (Guerini et al.): hate speech (1) paired with counter-narratives (0) that quote or discuss the
    same claim about the same group. English only: Multitarget-CONAN, DIALOCONAN, CONAN.csv rows with an EN id."""
    r = _Reader(CONAN, where)
    counter = labels(0.0, 0.0, 0.0, 0.0)
    for row in r.rows(r.file("Multitarget-CONAN.csv")):
        r.add(row.get("HATE_SPEECH"), _hateful(1.0))
        r.add(row.get("COUNTER_NARRATIVE"), counter)
    for row in r.rows(r.file("DIALOCONAN.csv")):
        kind = row.get("type")
        r.add(row.get("text"), _hateful(1.0) if kind == "HS" else counter if kind == "CN" else "bad_type")
    for row in r.rows(r.file("CONAN.csv")):
        if not str(row.get("cn_id", "")).startswith("EN"):
            r.report.skipped["not_english"] += 1
            continue
        r.add(row.get("hateSpeech"), _hateful(1.0))
        r.add(row.get("counterSpeech"), counter)
    return r.done()


# How a reply quotes the post it answers. Written for this corpus (not the functional suite's counter-speech
# templates): the reply formats of forums and social media.
QUOTE_FRAMES = (
    '"{hs}" {cn}',
    'Replying to "{hs}": {cn}',
    '> {hs}\n{cn}',
    'Someone here wrote "{hs}" {cn}',
    '{cn} (re: "{hs}")',
)
# The scorer reads 64 tokens (TrainSettings.max_length); ~45 words of post + reply fit, so the rebuttal is not cut off
# and the example does not reduce to the quoted hate with a "not hateful" label.
QUOTE_MAX_WORDS = 45


def conan_pairs(r: _Reader) -> Iterable[tuple[Any, Any]]:
    """(hate speech, the counter-narrative that answers it) from the three English CONAN files."""
    for row in r.rows(r.file("Multitarget-CONAN.csv")):
        yield row.get("HATE_SPEECH"), row.get("COUNTER_NARRATIVE")
    dialogues: dict[str, list[dict[str, Any]]] = {}
    for row in r.rows(r.file("DIALOCONAN.csv")):
        dialogues.setdefault(str(row.get("dialogue_id")), []).append(row)
    for turns in dialogues.values():
        turns.sort(key=lambda t: int(t["turn_id"]) if str(t.get("turn_id", "")).isdigit() else -1)
        for post, reply in zip(turns, turns[1:]):
            if post.get("type") == "HS" and reply.get("type") == "CN":
                yield post.get("text"), reply.get("text")
    for row in r.rows(r.file("CONAN.csv")):
        if not str(row.get("cn_id", "")).startswith("EN"):
            r.report.skipped["not_english"] += 1
            continue
        yield row.get("hateSpeech"), row.get("counterSpeech")


def read_conan_quoted(where: Path) -> tuple[list[Example], SourceReport]:
    """Counter-speech that quotes the hate it answers (0 for toxicity and identity_attack; insult and threat
    unsaid: the quote may carry either). Built from CONAN's hate speech / counter-narrative pairs, because no
    source here has replies that quote hate, and a scorer that has only seen hateful claims *stated* flags every
    reply that repeats one to rebut it (docs/SCORERS.md, the functional suite's counter-speech block). Each example
    takes the split side of both texts it is built from (``Example.side_keys``); the frame is fixed per pair."""
    r = _Reader(CONAN_QUOTED, where)
    counter = labels(0.0, 0.0)
    for hs, cn in conan_pairs(r):
        if not (isinstance(hs, str) and isinstance(cn, str)) or len(hs.strip()) < 3 or len(cn.strip()) < 3:
            r.report.skipped["missing_text"] += 1
            continue
        hs, cn = " ".join(hs.split()), " ".join(cn.split())
        if len(hs.split()) + len(cn.split()) > QUOTE_MAX_WORDS:
            r.report.skipped["too_long_to_quote"] += 1
            continue
        pick = int(hashlib.sha256(f"{hs}\0{cn}".encode()).hexdigest()[:8], 16) % len(QUOTE_FRAMES)
        text = QUOTE_FRAMES[pick].format(hs=hs, cn=cn)
        r.examples.append(Example(text, counter, CONAN_QUOTED.key, normalise(text),
                                  side_keys=(normalise(hs), normalise(cn))))
    return r.done()


_MENTION = re.compile(r"MENTION\d+")


def read_cmsb(where: Path) -> tuple[list[Example], SourceReport]:
    """"Call me sexist but" (Samory et al. 2021): ``text, sexist``; ``of_id != -1`` marks the adversarial minimal
    edits of sexist originals that annotators judged non-sexist (counted in origin)."""
    r = _Reader(CMSB, where)
    edits = 0
    for row in r.rows(r.file("sexism_data.csv")):
        y = _binary(row.get("sexist"))
        text = row.get("text")
        if isinstance(text, str):
            text = _MENTION.sub("@user", text)
        if y is not None and str(row.get("of_id", "-1")).strip() not in ("-1", ""):
            edits += 1
        r.add(text, "bad_label" if y is None else _hateful(y))
    r.report.origin["adversarial_edits"] = edits
    return r.done()


def read_stormfront(where: Path) -> tuple[list[Example], SourceReport]:
    """Stormfront sentences (de Gibert et al. 2018): hate / noHate; "relation" (hateful only with context) and
    idk/skip are skipped."""
    r = _Reader(STORMFRONT, where)
    by_label = {"hate": labels(1.0, 1.0), "noHate": {**CLEAN, "insult": None}, "relation": "needs_context",
                "idk/skip": "annotator_skipped"}
    for row in r.rows(r.file("stormfront_hate.csv")):
        r.add(row.get("text"), by_label.get(str(row.get("label", "")).strip(), "bad_label"))
    return r.done()


def _fraction(value: Any) -> float | None:
    try:
        v = float(str(value).strip())
    except ValueError:
        return None
    return v if math.isfinite(v) and 0.0 <= v <= 1.0 else None


def read_ethos(where: Path) -> tuple[list[Example], SourceReport]:
    """ETHOS (Mollas et al. 2022): ``comment;isHate`` with isHate the share of annotators (>= 0.5: hateful); the
    multi-label file's ``violence`` share (>= 0.5) gives ``threat`` for the hateful comments."""
    r = _Reader(ETHOS, where)
    violent: dict[str, float] = {}
    for row in r.rows(r.file("Ethos_Dataset_Multi_Label.csv"), delimiter=";"):
        v = _fraction(row.get("violence"))
        if isinstance(row.get("comment"), str) and v is not None:
            violent[normalise(row["comment"])] = float(v >= 0.5)
    multi_rows = r.report.rows_read
    r.report.rows_read = 0
    for row in r.rows(r.file("Ethos_Dataset_Binary.csv"), delimiter=";"):
        share = _fraction(row.get("isHate"))
        text = row.get("comment")
        if share is None:
            r.add(text, "bad_label")
        elif share >= 0.5:
            r.add(text, {**_hateful(1.0), "threat": violent.get(normalise(text)) if isinstance(text, str) else None})
        else:
            r.add(text, {**_hateful(0.0), "threat": 0.0})
    r.report.origin["multi_label_rows"] = multi_rows
    return r.done()


def read_olid(where: Path) -> tuple[list[Example], SourceReport]:
    """OLID / OffensEval 2019 (Zampieri et al.): subtask a NOT/OFF, b TIN (targeted) / UNT (untargeted profanity),
    c IND/GRP/OTH. Untargeted profanity is *not* toxicity in harmgate's sense (hateful or threatening)."""
    r = _Reader(OLID, where)
    for row in r.rows(r.file("olid-training-v1.0.tsv"), delimiter="\t"):
        a, b, c = (str(row.get(k, "")).strip() for k in ("subtask_a", "subtask_b", "subtask_c"))
        if a == "NOT":
            lab: dict[str, float | None] | str = CLEAN
        elif a == "OFF" and b == "UNT":
            lab = labels(0.0, 0.0, 0.0, None)
        elif a == "OFF" and b == "TIN":
            lab = labels(None, None if c == "GRP" else 0.0, 1.0, None)
        else:
            lab = "bad_label"
        r.add(row.get("tweet"), lab)
    return r.done()


def read_sbic(where: Path) -> tuple[list[Example], SourceReport]:
    """Social Bias Frames, offensive posts only (dev + test, with GPT-3.5/human target spans). Offensive with a
    target group: hateful; offensive without one: insult only. Posts rated 0.5 (maybe offensive) are skipped."""
    r = _Reader(SBIC, where)
    for name in ("sbic_dev_offensive_spans.jsonl", "sbic_test_offensive_spans.jsonl"):
        for line in r.text(r.file(name)).splitlines():
            if not line.strip():
                continue
            r.report.rows_read += 1
            try:
                row = json.loads(line)  # the files write missing values as NaN, which Python's json accepts
            except json.JSONDecodeError:
                r.add(None, "invalid_json")
                continue
            if _fraction(row.get("offensive")) != 1.0:
                r.add(None, "maybe_offensive")
                continue
            target = row.get("target")
            group = isinstance(target, str) and target.strip() != ""
            r.add(row.get("post"), labels(1.0, 1.0, 1.0) if group else labels(None, None, 1.0))
    return r.done()


READERS: dict[str, tuple[DataRef, Callable[[Path], tuple[list[Example], SourceReport]]]] = {
    ref.key: (ref, fn) for ref, fn in (
        (DYNAHATE, read_dynahate), (HATEXPLAIN, read_hatexplain), (IMPLICIT_HATE, read_implicit_hate),
        (HATEMOJI, read_hatemoji), (CONAN, read_conan), (CONAN_QUOTED, read_conan_quoted), (CMSB, read_cmsb),
        (STORMFRONT, read_stormfront), (ETHOS, read_ethos), (OLID, read_olid), (SBIC, read_sbic))}

