"""What a suite is: sources -> items -> (generations or log-likelihoods) -> metrics with intervals, breakdowns
and per-sample records.

A suite declares its sources (:class:`~evals.suites.sources.SourceSpec`), turns their rows into
:class:`EvalItem` s and implements ``run(model, tokenizer, cfg, ctx)``. The default ``run`` generates (batched,
k per prompt) and calls ``score``; suites that need log-likelihoods or lm-evaluation-harness override ``run``.
"""

from __future__ import annotations

import difflib
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from evals.stats import Bootstrap
from evals.suites.sources import SourceError, SourceRows, SourceSpec, load_source
from harmgate.config import GenerationConfig, SuiteConfig

Kind = Literal["generation", "likelihood", "lm-eval", "generation+likelihood"]


class SuiteConfigError(ValueError):
    """A suite entry of the config that this suite cannot run; the message names the suite and the key."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteResult:
    metrics: dict[str, dict[str, Any]]                  # metric -> {value, n, ci95, ...}
    breakdowns: dict[str, dict[str, dict[str, Any]]]    # by -> group -> metric -> {value, n, ci95, ...}
    samples: list[dict[str, Any]]                       # {id, prompt, output, scores, meta}
    info: dict[str, Any] = field(default_factory=dict)  # judge, scorer, sources, lm-eval task, notes


@dataclass
class Loaded:
    items: list[EvalItem]
    sources: list[dict[str, Any]]   # {key, licence, origin, rows, items}


class Judge(Protocol):
    name: str

    def judge(self, reply: str, prompt: str | None = None) -> Any: ...


@dataclass
class SuiteContext:
    """What a suite needs besides the model: settings and lazily built scorers (built once, only if used)."""

    mirror: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    boot: Bootstrap = field(default_factory=Bootstrap)
    toxicity_factory: Callable[[], Any] | None = None
    judge_factory: Callable[[], Judge] | None = None
    work_dir: Path | None = None
    desc: str = ""
    system_prompt: str | None = None  # the prompted arm's; None for base and tuned
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def chat(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """A conversation as this arm sends it: after the arm's system prompt, if any."""
        from evals.generate import with_system_prompt

        return with_system_prompt(messages, self.system_prompt)

    def toxicity(self):
        if "toxicity" not in self._cache:
            if self.toxicity_factory is None:
                raise SuiteConfigError(f"{self.desc or 'suite'}: needs a toxicity scorer and none is configured "
                                       f"(evals.toxicity_scorer)")
            self._cache["toxicity"] = self.toxicity_factory()
        return self._cache["toxicity"]

    def judge(self) -> Judge:
        if "judge" not in self._cache:
            if self.judge_factory is None:
                from evals.judge import load_judge

                self._cache["judge"] = load_judge()  # the rules judge
            else:
                self._cache["judge"] = self.judge_factory()
        return self._cache["judge"]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def group_items(items: list[EvalItem], key: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[str(it.meta.get(key, "unknown"))].append(i)
    return dict(sorted(groups.items()))


def sample_items(items: list[EvalItem], limit: int | None, seed: int, stratify_by: str | None) -> list[EvalItem]:
    """``limit`` items, seeded; spread equally over the ``stratify_by`` groups (a small group gives all it has
    and its shortfall goes to the others), so every group a breakdown reports is represented."""
    if not limit or limit >= len(items):
        return list(items)
    if not stratify_by:
        picked = sorted(random.Random(seed).sample(range(len(items)), limit))
        return [items[i] for i in picked]
    from align.mixture import allocate

    groups = group_items(items, stratify_by)
    names = list(groups)
    take = allocate([len(groups[g]) for g in names], [1.0] * len(names), limit)
    picked: list[int] = []
    for g, k in zip(names, take):
        picked.extend(random.Random(f"{seed}:{g}").sample(groups[g], k))
    return [items[i] for i in sorted(picked)]


class Suite:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kind: ClassVar[Kind] = "generation"
    sources: ClassVar[tuple[SourceSpec, ...]] = ()
    # Data a suite reads besides its items (the attack suite's jailbreak templates): fixed, not re-pointable, but
    # fetched like any source (harmgate.hubcache.hub_refs lists them for a connected user's cache).
    template_sources: ClassVar[tuple[SourceSpec, ...]] = ()
    metrics_doc: ClassVar[dict[str, str]] = {}      # metric -> what it means (and which way is better)
    stratify_by: ClassVar[str | None] = "source"
    prompt_format: ClassVar[Literal["chat", "raw"]] = "chat"
    default_generation: ClassVar[dict[str, Any]] = {}  # the benchmark's protocol, e.g. sampling for RTP
    Options: ClassVar[type[BaseModel]] = NoOptions
    # An evaluation set held out of every training mixture, whether or not the run's config evaluates it
    # (attack_robustness: its pool and templates are shared with data the alignment work trains on).
    always_held_out: ClassVar[bool] = False

    # --- configuration -------------------------------------------------------------------------------------
    def options(self, cfg: SuiteConfig) -> Any:
        try:
            return self.Options.model_validate(cfg.options or {})
        except ValidationError as err:
            lines = []
            for e in err.errors():
                path = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    known = list(self.Options.model_fields)
                    close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(known) or 'none'}"
                    lines.append(f"{path}: unknown option ({hint})")
                else:
                    lines.append(f"{path}: {e['msg']}")
            raise SuiteConfigError(f"evals.suites[{self.name}].options: " + "; ".join(lines)) from None

    def selected_sources(self, cfg: SuiteConfig) -> list[tuple[SourceSpec, str | None]]:
        specs = {s.key: s for s in self.sources}
        if cfg.source is not None and cfg.sources is not None:
            raise SuiteConfigError(f"evals.suites[{self.name}]: set source or sources, not both")
        if cfg.source is not None:
            if len(self.sources) != 1:
                raise SuiteConfigError(f"evals.suites[{self.name}].source: this suite has {len(self.sources)} sources "
                                       f"({', '.join(specs)}); re-point one with sources: {{KEY: REF}}")
            return [(self.sources[0], cfg.source)]
        if cfg.sources is None:
            return [(s, None) for s in self.sources]
        chosen = dict.fromkeys(cfg.sources) if isinstance(cfg.sources, list) else dict(cfg.sources)
        unknown = [k for k in chosen if k not in specs]
        if unknown:
            close = difflib.get_close_matches(unknown[0], specs, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"this suite's sources: {', '.join(specs)}"
            raise SuiteConfigError(f"evals.suites[{self.name}].sources: unknown source {unknown[0]!r} ({hint})")
        if not chosen:
            raise SuiteConfigError(f"evals.suites[{self.name}].sources: empty")
        return [(specs[k], ref) for k, ref in chosen.items()]

    def generation_config(self, base: GenerationConfig, cfg: SuiteConfig) -> GenerationConfig:
        """Global settings <- the suite's protocol defaults <- the config's per-suite overrides."""
        merged = {**base.model_dump(), **self.default_generation}
        if cfg.generation is not None:
            merged.update(cfg.generation.model_dump(exclude_none=True))
        gen = GenerationConfig(**merged)
        if cfg.k > 1 and gen.temperature == 0:
            raise SuiteConfigError(f"evals.suites[{self.name}]: k={cfg.k} samples per prompt need sampling; "
                                   f"set generation.temperature > 0")
        return gen

    def check(self, cfg: SuiteConfig) -> None:
        """Everything about ``cfg`` that can be checked without reading data (called before any model loads)."""
        self.options(cfg)
        self.selected_sources(cfg)

    # --- data ----------------------------------------------------------------------------------------------
    def read_source(self, spec: SourceSpec, ref: str | None, mirror: str | None, options: Any) -> SourceRows:
        return load_source(spec, ref=ref, mirror=mirror, suite=self.name)

    def items_from_rows(self, src: SourceRows, options: Any) -> list[EvalItem]:
        raise NotImplementedError

    def load(self, cfg: SuiteConfig, mirror: str | None) -> Loaded:
        options = self.options(cfg)
        items: list[EvalItem] = []
        sources: list[dict[str, Any]] = []
        for spec, ref in self.selected_sources(cfg):
            src = self.read_source(spec, ref, mirror, options)
            try:
                got = self.items_from_rows(src, options)
            except (KeyError, TypeError, ValueError) as err:
                raise SourceError(f"suite {self.name}, source {spec.key!r} ({src.origin}): rows do not have the "
                                  f"expected shape: {err}") from None
            if not got:
                raise SourceError(f"suite {self.name}, source {spec.key!r} ({src.origin}) gave no items")
            items.extend(got)
            sources.append({"key": spec.key, "licence": spec.licence, "origin": src.origin,
                            "rows": len(src.rows), "items": len(got)})
        picked = sample_items(items, cfg.limit, cfg.seed, self.stratify_by)
        used = defaultdict(int)
        for it in picked:
            used[it.meta.get("source")] += 1
        for s in sources:
            s["used"] = used.get(s["key"], 0)
        return Loaded(picked, sources)

    def eval_prompts(self, cfg: SuiteConfig, mirror: str | None) -> list[str]:
        """The user turns this suite asks: the training mixture must not contain them (align.mixture compares
        an example's first user turn, so multi-turn items give theirs as ``meta["first_user_turn"]``)."""
        return [it.meta.get("first_user_turn", it.prompt) for it in self.load(cfg, mirror).items]

    # --- running -------------------------------------------------------------------------------------------
    def use_chat(self, options: Any) -> bool:
        return getattr(options, "prompt_format", self.prompt_format) == "chat"

    def applies_system_prompt(self, cfg: SuiteConfig) -> bool:
        """Whether a system prompt changes what this suite measures: chat-rendered prompts only (a raw text
        continuation or an lm-eval task has no system turn), so the prompted arm skips the others."""
        return self.use_chat(self.options(cfg))

    def run(self, model, tokenizer, cfg: SuiteConfig, ctx: SuiteContext) -> SuiteResult:
        from evals.generate import generate

        loaded = self.load(cfg, ctx.mirror)
        options = self.options(cfg)
        chat = self.use_chat(options)
        outputs = generate(model, tokenizer, [it.prompt for it in loaded.items], ctx.generation, k=cfg.k,
                           chat=chat, seed=cfg.seed, desc=ctx.desc or self.name,
                           system_prompt=ctx.system_prompt if chat else None)
        result = self.score(loaded.items, outputs, cfg, ctx)
        result.info["sources"] = loaded.sources
        return result

    def score(self, items: list[EvalItem], outputs: list[list[str]], cfg: SuiteConfig,
              ctx: SuiteContext) -> SuiteResult:
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


def first_field(row: dict[str, Any], names: tuple[str, ...], where: Callable[[], str]) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ValueError(f"{where()}: none of the columns {names} holds a prompt")


def sample_record(item: EvalItem, output: str | None, scores: dict[str, Any], *,
                  outputs: list[str] | None = None) -> dict[str, Any]:
    """One per-sample record (docs/RESULTS_SCHEMA.md)."""
    record: dict[str, Any] = {"id": item.id, "prompt": item.prompt, "output": output}
    if outputs is not None and len(outputs) > 1:
        record["outputs"] = outputs
    record["scores"] = scores
    record["meta"] = item.meta
    return record
