"""What a suite is: prompts in, replies scored into metrics with intervals and per-sample records."""

from __future__ import annotations

import csv
import difflib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harmgate.config import SuiteConfig
from harmgate.mirror import resolve_data


@dataclass(frozen=True)
class EvalItem:
    id: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteResult:
    metrics: dict[str, dict[str, Any]]          # metric -> {value, n, count, ci95}
    breakdowns: dict[str, dict[str, Any]]        # e.g. {"type": {"homonyms": {value, n, ci95}}}
    samples: list[dict[str, Any]]                # id, prompt, reply, judgement, meta


class Suite:
    name: str = ""
    default_source: str = ""
    default_split: str = "train"
    description: str = ""

    def load(self, cfg: SuiteConfig, mirror: str | None) -> list[EvalItem]:
        items = self.read_items(cfg, mirror)
        if not items:
            raise ValueError(f"suite {self.name}: source {cfg.source or self.default_source!r} gave no prompts")
        if cfg.limit and cfg.limit < len(items):
            items = random.Random(cfg.seed).sample(items, cfg.limit)
        return items

    def read_items(self, cfg: SuiteConfig, mirror: str | None) -> list[EvalItem]:
        raise NotImplementedError

    def score(self, items: list[EvalItem], replies: list[str]) -> SuiteResult:
        raise NotImplementedError


_REGISTRY: dict[str, type[Suite]] = {}


def register_suite(cls: type[Suite]) -> type[Suite]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def registered_suites() -> list[str]:
    return sorted(_REGISTRY)


def get_suite(name: str) -> Suite:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"registered: {', '.join(registered_suites())}"
        raise KeyError(f"unknown eval suite {name!r} ({hint})")
    return _REGISTRY[name]()


def read_rows(source: str, split: str, mirror: str | None) -> list[dict[str, Any]]:
    """Rows of a CSV / JSON / JSONL file (local or mirrored), or of a hub dataset split."""
    resolved = resolve_data(source, split=split, mirror=mirror)
    if not resolved.is_local:
        from datasets import load_dataset

        try:
            return list(load_dataset(resolved.hub_id, split=split))
        except Exception as err:  # datasets raises many types offline; all mean the same to the user
            raise FileNotFoundError(
                f"eval source {source!r} is not a local file, not in the data mirror and not reachable on the hub "
                f"({type(err).__name__}: {err}); set HARMGATE_DATA_MIRROR") from None
    path: Path = resolved.path  # type: ignore[assignment]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else next(v for v in data.values() if isinstance(v, list))
    raise ValueError(f"eval source {path}: unsupported file type {path.suffix!r}")


def first_field(row: dict[str, Any], names: tuple[str, ...], where: Callable[[], str]) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ValueError(f"{where()}: none of the columns {names} holds a prompt")
