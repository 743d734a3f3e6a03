"""On-policy training replies for prompt-only sources: sample the base model, judge the samples, keep what the
source's intent asks for (rejection sampling; issue #14's levers 2 and 3).

For each prompt, two conditions are sampled ``samples`` times each: *plain* (no system prompt: what the base
model does by itself) and *steered*: for harmful and benign prompts a refusal-steering system prompt AND a
prefilled refusal opener ("I'm sorry, but I can't help with that.") that the model continues in its own words
(a 135M model ignores system prompts, not a prefilled opening); for continuations a "stay clean" system prompt.
Then:

| intent | chosen (SFT/ULMA positive, DPO chosen) | rejected (ULMA negative, DPO rejected) |
|---|---|---|
| harmful | a steered sample the judge calls a refusal, toxicity < max | a plain sample the judge calls compliance |
| benign | a plain sample the judge calls compliance, toxicity < max | a sample the judge calls a refusal: an over-refusal (the steered, prefilled one first) |
| continuation | the least toxic steered sample, toxicity < max, not a refusal | the most toxic plain sample, toxicity > min_toxicity_rejected |

So the pairs are the model's own behaviour on both sides (on-policy), the judge and the toxicity scorer are the
same validated instruments the gate uses, and a prompt whose samples give no acceptable reply yields nothing
(counted in the data manifest under the reason), never a made-up reply.

This module does not import the model or the instruments: the pipeline's data stage passes them in
(``Sampler``, ``RefusalOracle``, ``ToxicityOracle``), which keeps align/ independent of evals/ and lets the tests
drive the rules with plain functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from harmgate.config import DataSource, SynthesisConfig

# Prompt columns of the known prompt-only files, tried in order when a source names none.
PROMPT_COLUMNS = ("prompt", "Request", "instruction", "question", "Question", "goal", "Behavior", "text")

# How a chat user asks for a continuation. Several phrasings, none of them the toxicity_rtp_chat suite's own
# (DecodingTrust's), so the model learns the behaviour rather than one template.
CONTINUATION_TEMPLATES = (
    "Continue this text:\n{prefix}",
    "Finish the following sentence.\n\n{prefix}",
    "Here is the start of a post. Write how it goes on:\n\"{prefix}\"",
    "Complete the text below in your own words.\n{prefix}",
)
CONTINUATION_PREFIX_WORDS = 24


def continuation_prompt(text: str) -> str:
    """A chat request to continue the first part of ``text`` (up to ~60% of its words, at most 24), with a
    template picked by the text's hash (stable across runs)."""
    words = text.split()
    cut = max(3, min(CONTINUATION_PREFIX_WORDS, (len(words) * 3) // 5))
    prefix = " ".join(words[:cut])
    digest = int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)
    return CONTINUATION_TEMPLATES[digest % len(CONTINUATION_TEMPLATES)].format(prefix=prefix)


class Sampler(Protocol):
    """k samples per prompt; ``prefills[i]`` (if given) opens the assistant turn of prompt i and is part of the
    returned text."""

    def __call__(self, prompts: list[str], *, system_prompt: str | None, k: int, seed: int,
                 prefills: list[str] | None = None) -> list[list[str]]: ...


RefusalOracle = Callable[[Sequence[str], Sequence[str]], list[str]]   # (prompts, replies) -> judge labels
ToxicityOracle = Callable[[Sequence[str]], list[float]]               # texts -> P(toxic)


@dataclass(frozen=True)
class Outcome:
    chosen: str | None
    rejected: str | None
    reason: str | None = None   # why a side is missing (the manifest counts it)


@dataclass
class Synthesizer:
    sample: Sampler
    judge: RefusalOracle
    toxicity: ToxicityOracle
    config: SynthesisConfig
    model_id: str
    cache_path: Path | None = None
    seed: int = 0
    # Which judge and toxicity scorer pick the replies (their names carry their fingerprints): part of the cache
    # key, so refitted instruments never reuse replies the old ones chose. A callable is asked once, on first use.
    instruments: str | Callable[[], str] = ""

    def _instruments_id(self) -> str:
        if callable(self.instruments):
            self.instruments = self.instruments()
        return self.instruments

    def __call__(self, source: DataSource, prompts: list[str]) -> list[Outcome]:
        assert source.intent is not None
        cache = self._load_cache()
        keys = [self._key(source.intent, p) for p in prompts]
        todo = [p for p, k in zip(prompts, keys) if k not in cache]
        if todo:
            for prompt, outcome in zip(todo, self._synthesise(source.intent, todo)):
                cache[self._key(source.intent, prompt)] = outcome
            self._save_cache(cache)
        return [cache[k] for k in keys]

    # --- the rules --------------------------------------------------------------------------------------------
    def _synthesise(self, intent: str, prompts: list[str]) -> list[Outcome]:
        cfg, k = self.config, self.config.samples
        plain = self.sample(prompts, system_prompt=None, k=k, seed=self.seed)
        if intent == "continuation":
            steered = self.sample(prompts, system_prompt=cfg.clean_system_prompt, k=k, seed=self.seed + 1)
        else:  # a refusal in the model's own words after a prefilled opener (stable per prompt)
            openers = [cfg.refusal_openers[int(hashlib.sha256(p.encode("utf-8")).hexdigest(), 16)
                                           % len(cfg.refusal_openers)] for p in prompts]
            steered = self.sample(prompts, system_prompt=cfg.refusal_system_prompt, k=k, seed=self.seed + 1,
                                  prefills=openers)
        flat_prompts = [p for p, outs in zip(prompts, plain) for _ in outs] + \
                       [p for p, outs in zip(prompts, steered) for _ in outs]
        flat = [o for outs in plain for o in outs] + [o for outs in steered for o in outs]
        labels = self.judge(flat_prompts, flat) if flat else []
        tox = self.toxicity(flat) if flat else []
        n_plain = sum(len(o) for o in plain)
        out, pos_p, pos_s = [], 0, n_plain
        for p_outs, s_outs in zip(plain, steered):
            p = [(o, labels[pos_p + i], tox[pos_p + i]) for i, o in enumerate(p_outs)]
            s = [(o, labels[pos_s + i], tox[pos_s + i]) for i, o in enumerate(s_outs)]
            pos_p += len(p_outs)
            pos_s += len(s_outs)
            out.append(self._pick(intent, p, s))
        return out

    def _pick(self, intent: str, plain: list[tuple[str, str, float]],
              steered: list[tuple[str, str, float]]) -> Outcome:
        cfg = self.config
        clean = lambda t: t < cfg.max_toxicity  # noqa: E731
        if intent == "harmful":
            chosen = next((o for o, lab, t in steered + plain if lab == "refusal" and clean(t) and o.strip()), None)
            rejected = next((o for o, lab, t in plain if lab == "compliance" and o.strip()), None)
            reason = None if chosen and rejected else ("no_refusal_sampled" if chosen is None
                                                       else "base_already_refuses")
        elif intent == "benign":
            chosen = next((o for o, lab, t in plain + steered if lab == "compliance" and clean(t) and o.strip()), None)
            rejected = next((o for o, lab, t in steered + plain if lab in ("refusal", "partial_refusal")), None)
            reason = None if chosen and rejected else ("no_answer_sampled" if chosen is None
                                                       else "base_never_over_refuses")
        else:  # continuation
            ok = sorted((t, o) for o, lab, t in steered if clean(t) and lab == "compliance" and o.strip())
            bad = sorted(((t, o) for o, lab, t in plain if t > cfg.min_toxicity_rejected), reverse=True)
            chosen = ok[0][1] if ok else None
            rejected = bad[0][1] if bad else None
            reason = None if chosen and rejected else ("no_clean_continuation" if chosen is None
                                                       else "base_not_toxic_here")
        return Outcome(chosen, rejected, reason)

    # --- the cache: prompts already sampled for this model and these settings -------------------------------------
    def _key(self, intent: str, prompt: str) -> str:
        settings = json.dumps(self.config.model_dump(), sort_keys=True)
        parts = (self.model_id, self._instruments_id(), settings, str(self.seed), intent, prompt)
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()

    def _load_cache(self) -> dict[str, Outcome]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        cache = {}
        for line in self.cache_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                cache[row["key"]] = Outcome(row["chosen"], row["rejected"], row.get("reason"))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line after a kill: that prompt is sampled again
        return cache

    def _save_cache(self, cache: dict[str, Outcome]) -> None:
        if self.cache_path is None:
            return
        from harmgate.rundir import write_text_atomic

        write_text_atomic(self.cache_path, "".join(json.dumps({"key": k, **asdict(v)}, ensure_ascii=False) + "\n"
                                                   for k, v in cache.items()))


__all__ = ["CONTINUATION_TEMPLATES", "Outcome", "PROMPT_COLUMNS", "RefusalOracle", "Sampler", "Synthesizer",
           "ToxicityOracle", "continuation_prompt"]
