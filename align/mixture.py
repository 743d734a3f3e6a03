"""The training mixture: sources -> conversational prompt/completion examples + a manifest.

Example (TRL's conversational prompt-completion shape; loss on the final reply only)::

    {"prompt": [{"role": "user", "content": "..."}, ...], "completion": [{"role": "assistant", "content": "..."}],
     "source": "Anthropic/hh-rlhf"}

Pipeline, per source in config order: read rows (``limit``) -> convert (hh: the ``field`` transcript;
instruction: instruction/input/output[/history]; pointwise: {messages, reply, label}, e.g. production feedback
from `harmgate feedback export`, each row with its own label) -> drop eval leaks -> drop duplicates (global, first source
wins). Every dropped row is counted under a reason in the manifest; nothing is dropped silently.

Sampling rule:

- ``max_examples`` is None: every usable row of every source is taken; weights do not change the data (a
  source cannot be "too small" for "everything"). The manifest says ``sampling: "all_usable"``.
- ``max_examples`` = N: each source's target is its weight share of N (largest remainder, so the targets sum
  to N). A source with fewer usable rows than its target gives all of them (never upsampled: no row appears
  twice) and the manifest records ``short_by``; the shortfall is re-shared among the other sources by weight,
  so the mixture still has N examples when the sources hold N usable rows in total. Rows are drawn without
  replacement with a per-source RNG seeded by (seed, position, id), then the whole mixture is shuffled.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from align.instructions import instruction_to_messages
from align.leakcheck import EvalIndex
from align.sources import SourceRows, read_source
from align.synthesis import PROMPT_COLUMNS, Outcome, Synthesizer, continuation_prompt
from align.text import normalise
from align.transcripts import (RowError, TranscriptError, parse_transcript, split_preference_pair,
                               split_prompt_completion)
from harmgate.config import ColumnMap, DataConfig, DataSource
from harmgate.rundir import RunDir, write_json, write_text_atomic

MANIFEST_VERSION = 1

# Licences of known training sources, used when the config does not state one.
KNOWN_LICENCES: dict[str, str] = {
    "Anthropic/hh-rlhf": "MIT",
    "Unified-Language-Model-Alignment/Anthropic_HH_Golden": "Apache-2.0",
    "tatsu-lab/alpaca": "CC BY-NC 4.0",
    "vinid/safety-tuned-llamas": "CC BY-NC 4.0",
    "GAIR/lima": "CC BY-NC-SA",
    "allenai/coconot": "MIT",
    "bench-llm/or-bench": "CC BY 4.0",
    "declare-lab/HarmfulQA": "Apache-2.0",
    "declare-lab/CategoricalHarmfulQA": "Apache-2.0",
    "walledai/StrongREJECT": "MIT",
    "walledai/MaliciousInstruct": "Apache-2.0",
    "ucberkeley-dlab/measuring-hate-speech": "CC BY 4.0",
}


class DataLeakError(ValueError):
    """Training examples whose first user turn is an evaluation prompt."""


@dataclass
class Mixture:
    examples: list[dict[str, Any]]
    manifest: dict[str, Any]


def row_to_example(row: dict[str, Any], source: DataSource) -> dict[str, Any]:
    """One raw row -> example; raises a RowError (with ``reason``) when the row cannot be used."""
    if source.format == "hh" and source.field == "pair":
        return _pair_example(row, source)
    if source.format == "pointwise":
        return _pointwise_example(row, source)
    if source.format == "qa":
        return _qa_example(row, source)
    if source.format == "hh":
        if source.field not in row:
            raise TranscriptError("missing_field", f"row has no {source.field!r} transcript")
        messages = parse_transcript(row[source.field])
    else:
        messages = instruction_to_messages(row)
    prompt, completion = split_prompt_completion(messages)
    return {"prompt": prompt, "completion": completion, "label": source.label, "source": source.id}


def check_where(row: dict[str, Any], source: DataSource) -> None:
    for column, wanted in (source.where or {}).items():
        if str(row.get(column, "")).strip() != wanted:
            raise TranscriptError("filtered_out", f"{column} is not {wanted!r}")


def row_prompt(row: dict[str, Any], source: DataSource) -> str:
    """The prompt text of a qa/prompt row: ``columns.prompt``, else the first known prompt column present."""
    names = [source.columns.prompt] if source.columns is not None else list(PROMPT_COLUMNS)
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise TranscriptError("missing_prompt", f"row has no prompt column ({', '.join(names)})")


def _reply(row: dict[str, Any], column: str | None, what: str) -> dict[str, str]:
    value = row.get(column) if column else None
    if not isinstance(value, str) or not value.strip():
        raise TranscriptError(f"missing_{what}", f"row has no {what} text in column {column!r}")
    return {"role": "assistant", "content": value.strip()}


def _qa_example(row: dict[str, Any], source: DataSource) -> dict[str, Any]:
    """A prompt column + reply column(s) (PHTest answers, CoCoNot pairs)."""
    check_where(row, source)
    columns = source.columns or ColumnMap()
    prompt = [{"role": "user", "content": row_prompt(row, source)}]
    if source.field == "pair":
        chosen, rejected = _reply(row, columns.reply, "reply"), _reply(row, columns.rejected, "rejected")
        if normalise(chosen["content"]) == normalise(rejected["content"]):
            raise TranscriptError("pair_identical", "chosen and rejected replies are the same")
        return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected], "source": source.id}
    column = columns.rejected if source.field == "rejected" else columns.reply
    return {"prompt": prompt, "completion": [_reply(row, column, "reply")], "label": source.label,
            "source": source.id}


def prompt_source_text(row: dict[str, Any], source: DataSource) -> str:
    """The user turn of a ``format: prompt`` row (a continuation intent wraps a prefix of the text)."""
    check_where(row, source)
    text = row_prompt(row, source)
    return continuation_prompt(text) if source.intent == "continuation" else text


def synthesised_example(prompt: str, outcome: Outcome, source: DataSource) -> dict[str, Any]:
    """An accepted on-policy sample -> an SFT/ULMA example or a DPO pair; raises when the sampling found none."""
    turn = [{"role": "user", "content": prompt}]
    if source.field == "pair":
        if outcome.chosen is None or outcome.rejected is None:
            raise TranscriptError(outcome.reason or "no_pair_sampled", "no accepted chosen + rejected sample")
        return {"prompt": turn, "chosen": [{"role": "assistant", "content": outcome.chosen}],
                "rejected": [{"role": "assistant", "content": outcome.rejected}], "source": source.id}
    reply = outcome.rejected if source.field == "rejected" else outcome.chosen
    if reply is None:
        raise TranscriptError(outcome.reason or "no_sample_accepted", "no accepted sample")
    return {"prompt": turn, "completion": [{"role": "assistant", "content": reply}], "label": source.label,
            "source": source.id}


def _pair_example(row: dict[str, Any], source: DataSource) -> dict[str, Any]:
    """HH chosen + rejected sharing one dialogue prefix -> a preference pair (DPO)."""
    prompt, chosen, rejected = split_preference_pair(row)
    if normalise(chosen["content"]) == normalise(rejected["content"]):
        raise TranscriptError("pair_identical", "chosen and rejected replies are the same")
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected], "source": source.id}


def _pointwise_example(row: dict[str, Any], source: DataSource) -> dict[str, Any]:
    """``{messages (ending with a user turn), reply, label: positive|negative, id?}`` -> a labelled example."""
    messages, reply, label = row.get("messages"), row.get("reply"), row.get("label")
    if label not in ("positive", "negative"):
        raise TranscriptError("bad_label", f"label must be 'positive' or 'negative', got {label!r}")
    if not isinstance(reply, str) or not reply.strip():
        raise TranscriptError("empty_reply", "no reply text")
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                       and isinstance(m.get("content"), str) for m in messages)
            or messages[-1]["role"] != "user"):
        raise TranscriptError("bad_messages", "messages must be a list of {role, content} ending with a user turn")
    example = {"prompt": [{"role": m["role"], "content": m["content"]} for m in messages],
               "completion": [{"role": "assistant", "content": reply}], "label": label, "source": source.id}
    if isinstance(row.get("id"), str):
        example["id"] = row["id"]  # provenance: which feedback record (data manifest row_ids)
    return example


def first_user_turn(example: dict[str, Any]) -> str:
    return next((m["content"] for m in example["prompt"] if m["role"] == "user"), "")


def _dedup_key(example: dict[str, Any]) -> str:
    parts = []
    for key in ("prompt", "completion", "chosen", "rejected"):
        turns = example.get(key) or []
        parts.append(key + "\x1d" + "\x1e".join(f"{m['role']}\x1f{normalise(m['content'])}" for m in turns))
    return f"{example.get('label', '')}\x1c" + "\x1c".join(parts)


def user_turns(example: dict[str, Any]) -> list[str]:
    return [m["content"] for m in example.get("prompt", []) if m.get("role") == "user"]


def leak_of(example: dict[str, Any], index: EvalIndex) -> str | None:
    """``exact``/``contained`` if any user turn of the example is or contains an eval prompt (align/leakcheck.py)."""
    for turn in user_turns(example):
        found = index.match(turn)
        if found:
            return found
    return None


def check_no_leakage(examples: Iterable[dict[str, Any]], eval_prompts: Iterable[str] | EvalIndex) -> None:
    """Raise DataLeakError if any example's user turn is, or contains, an evaluation prompt."""
    index = eval_prompts if isinstance(eval_prompts, EvalIndex) else EvalIndex(eval_prompts)
    leaks = [first_user_turn(ex) for ex in examples if leak_of(ex, index)]
    if leaks:
        shown = "; ".join(repr(t[:80]) for t in leaks[:3])
        raise DataLeakError(f"{len(leaks)} training example(s) have an evaluation prompt in a user turn, "
                            f"e.g. {shown}")


def _largest_remainder(total: int, weights: list[float]) -> list[int]:
    wsum = sum(weights)
    raw = [total * w / wsum for w in weights]
    shares = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def allocate(pools: list[int], weights: list[float], total: int) -> list[int]:
    """Rows to take per source: weight shares of ``total``, capped by pool size; a capped source's
    shortfall is re-shared among the others by weight (water-filling). Never exceeds a pool."""
    alloc = [0] * len(pools)
    active = [i for i, p in enumerate(pools) if p > 0]
    remaining = min(total, sum(pools))
    while remaining > 0 and active:
        shares = _largest_remainder(remaining, [weights[i] for i in active])
        capped = [i for i, s in zip(active, shares) if s > pools[i]]
        if not capped:
            for i, s in zip(active, shares):
                alloc[i] = s
            break
        for i in capped:
            alloc[i] = pools[i]
            remaining -= pools[i]
        active = [i for i in active if i not in capped]
    return alloc


def _licence(source: DataSource) -> tuple[str, str]:
    if source.licence:
        return source.licence, "config"
    if source.id in KNOWN_LICENCES:
        return KNOWN_LICENCES[source.id], "builtin"
    return "unknown", "unknown"


def _convert_rows(raw: SourceRows, source: DataSource, index: EvalIndex, skipped: Counter[str],
                  synthesizer: Synthesizer | None) -> list[dict[str, Any]]:
    """Rows -> examples, leaks dropped (counted as eval_leak / eval_leak_contained). Prompt-only rows are leak-checked
    *before* sampling, so no model time is spent on a prompt that could not be used."""
    if source.format != "prompt":
        out = []
        for row in raw.rows:
            try:
                out.append(row_to_example(row, source))
            except RowError as err:
                skipped[err.reason] += 1
        return _drop_leaks(out, index, skipped)
    if synthesizer is None:
        raise ValueError(f"source {source.id!r} (format: prompt) needs replies sampled from the base model; "
                         "build it through the pipeline's data stage (harmgate data), which provides them")
    prompts: list[str] = []
    for row in raw.rows:
        try:
            prompts.append(prompt_source_text(row, source))
        except RowError as err:
            skipped[err.reason] += 1
    probe = _drop_leaks([{"prompt": [{"role": "user", "content": p}]} for p in dict.fromkeys(prompts)], index,
                        skipped)
    if len(prompts) > len(dict.fromkeys(prompts)):
        skipped["duplicate"] += len(prompts) - len(dict.fromkeys(prompts))
    kept = [ex["prompt"][0]["content"] for ex in probe]
    out = []
    for prompt, outcome in zip(kept, synthesizer(source, kept)):
        try:
            out.append(synthesised_example(prompt, outcome, source))
        except RowError as err:
            skipped[err.reason] += 1
    return out


def _drop_leaks(examples: list[dict[str, Any]], index: EvalIndex, skipped: Counter[str]) -> list[dict[str, Any]]:
    if not len(index):
        return examples
    kept = []
    for ex in examples:
        found = leak_of(ex, index)
        if found:
            skipped["eval_leak" if found == "exact" else "eval_leak_contained"] += 1
        else:
            kept.append(ex)
    return kept


def build_mixture(data: DataConfig, *, eval_prompts: Iterable[str] = (),
                  synthesizer: Synthesizer | None = None) -> Mixture:
    index = EvalIndex(eval_prompts)
    seen: set[str] = set()
    pools: list[list[dict[str, Any]]] = []
    entries: list[dict[str, Any]] = []
    raw_paths: list[str | None] = []
    for source in data.sources:
        raw: SourceRows = read_source(source, mirror=data.mirror)
        raw_paths.append(raw.origin.get("path"))
        skipped: Counter[str] = Counter(raw.skipped)
        pool: list[dict[str, Any]] = []
        for ex in _convert_rows(raw, source, index, skipped, synthesizer):
            if data.dedup:
                key = _dedup_key(ex)
                if key in seen:
                    skipped["duplicate"] += 1
                    continue
                seen.add(key)
            pool.append(ex)
        licence, licence_origin = _licence(source)
        pools.append(pool)
        entries.append({
            "id": source.id, "format": source.format, "field": source.field if source.format in ("hh", "qa", "prompt") else None,
            "label": source.label if source.field != "pair" and source.format != "pointwise" else None,
            "intent": source.intent, "where": source.where,
            "data_dir": source.data_dir, "split": source.split, "resolved": raw.origin,
            "licence": licence, "licence_origin": licence_origin, "weight": source.weight, "limit": source.limit,
            "rows_read": raw.rows_read, "usable": len(pool), "target": None, "used": 0, "short_by": 0,
            "skipped": dict(sorted(skipped.items())),
        })

    sizes = [len(p) for p in pools]
    weights = [s.weight for s in data.sources]
    notes: list[str] = []
    if data.max_examples is None:
        take = sizes
    else:
        targets = _largest_remainder(data.max_examples, weights)
        take = allocate(sizes, weights, data.max_examples)
        for entry, target, size in zip(entries, targets, sizes):
            entry["target"] = target
            if size < target:
                entry["short_by"] = target - size
                notes.append(f"{entry['id']}: {size} usable rows, fewer than its {target}-row weight share; all "
                             f"taken (not upsampled), the {target - size}-row shortfall re-shared by weight")
        if sum(take) < data.max_examples:
            notes.append(f"mixture has {sum(take)} examples, fewer than max_examples={data.max_examples}: "
                         f"the sources hold no more usable rows")

    examples: list[dict[str, Any]] = []
    for i, (source, pool, k, entry) in enumerate(zip(data.sources, pools, take, entries)):
        # String seeds hash with SHA-512: stable across processes (unlike hash()).
        rng = random.Random(f"{data.seed}:{i}:{source.id}")
        picked = sorted(rng.sample(range(len(pool)), k)) if k < len(pool) else range(len(pool))
        examples.extend(pool[j] for j in picked)
        entry["used"] = k
        if source.format == "pointwise":
            _pointwise_provenance(entry, [pool[j] for j in picked], raw_paths[i])
    random.Random(f"{data.seed}:shuffle").shuffle(examples)

    total_skipped: Counter[str] = Counter()
    for entry in entries:
        total_skipped.update(entry["skipped"])
    manifest = {
        "version": MANIFEST_VERSION,
        "sampling": "all_usable" if data.max_examples is None else "weighted_shares",
        "seed": data.seed, "dedup": data.dedup, "max_examples": data.max_examples,
        "eval_prompts_checked": len(index),
        "leak_check": {"exact": "casefolded, punctuation dropped, whitespace collapsed (align/leakcheck.py)",
                       "contained_min_words": index.n},
        "sources": entries,
        "totals": {
            "rows_read": sum(e["rows_read"] for e in entries), "usable": sum(sizes), "examples": len(examples),
            "skipped": dict(sorted(total_skipped.items())),
        },
        "licences": sorted({e["licence"] for e in entries}),
        "notes": notes,
    }
    return Mixture(examples=examples, manifest=manifest)


def _pointwise_provenance(entry: dict[str, Any], used: list[dict[str, Any]], path: str | None) -> None:
    """Which rows went in (their ids) and, for a feedback export, its manifest: the registry manifest of the model
    trained on it then says which production feedback it learnt from."""
    from align.feedback import export_summary

    entry["labels_used"] = dict(sorted(Counter(ex["label"] for ex in used).items()))
    entry["row_ids"] = sorted(ex["id"] for ex in used if "id" in ex)
    if path:
        summary = export_summary(Path(path))
        if summary is not None:
            entry["feedback_export"] = summary


def write_mixture(mixture: Mixture, run: RunDir) -> None:
    """train.jsonl first, then the manifest (with the data file's hash): a manifest implies complete data."""
    text = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in mixture.examples)
    write_text_atomic(run.train_data, text)
    manifest = dict(mixture.manifest)
    manifest["train_data"] = {
        "path": str(run.train_data.relative_to(run.root)), "examples": len(mixture.examples),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    write_json(run.data_manifest, manifest)


def read_mixture(run: RunDir) -> list[dict[str, Any]]:
    path: Path = run.train_data
    if not path.is_file():
        raise FileNotFoundError(f"missing artifact {path}: run the data stage first")
    examples: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not valid JSON ({err}); rerun the data stage") from None
            if not (isinstance(ex, dict) and isinstance(ex.get("prompt"), list)
                    and isinstance(ex.get("completion"), list)):
                raise ValueError(f"{path}:{n} is not a prompt/completion example; rerun the data stage")
            examples.append(ex)
    return examples


__all__ = ["Mixture", "DataLeakError", "leak_of", "user_turns", "KNOWN_LICENCES", "allocate", "build_mixture", "check_no_leakage",
           "first_user_turn", "normalise", "read_mixture", "row_to_example", "write_mixture"]
