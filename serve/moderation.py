"""Moderation of replies: every reply is scored by a toxicity scorer before any of it reaches the user.

Above the threshold the reply is replaced by the configured refusal and flagged (``finish_reason:
"content_filter"``). A scorer that fails or returns something that is not a probability blocks the reply
too: moderation fails closed.

Streaming (``StreamGate``): text is released one sentence at a time, and only after the whole reply *up to
the end of that sentence* scored under the threshold, so no unmoderated character is ever sent. If a later
sentence tips the score over, generation stops and the refusal is sent in place of the rest; the sentences
already sent had passed moderation as they stood. ``stream_granularity: reply`` holds the whole reply until it
is scored instead (no partial text at all, at the cost of streaming's latency benefit). Log-probabilities are
released with the text they belong to and never ahead of it (serve/app.py); alternative tokens
(``top_logprobs``) are model text too and go through ``StreamGate.check_extra`` before they are sent.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

from evals.scorers.base import TextScorer
from harmgate.config import ModerationConfig, RunConfig

log = logging.getLogger("harmgate.serve")

# A sentence ends at . ! ? … (maybe followed by quotes/brackets) and whitespace, or at a line break.
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s+|\n+")
# Without a sentence end, release at a word boundary once this much text is held back (keeps streams moving).
_MAX_HELD_CHARS = 240


class ModerationUnavailable(RuntimeError):
    """The configured scorer cannot be loaded: the service does not start without moderation."""


@dataclass(frozen=True)
class ModerationResult:
    flagged: bool
    score: float
    threshold: float
    scorer: str
    error: str | None = None  # set when the scorer failed (and the reply was blocked for it)

    def as_json(self) -> dict[str, Any]:
        out = {"flagged": self.flagged, "score": round(self.score, 6), "threshold": self.threshold,
               "scorer": self.scorer}
        if self.error:
            out["error"] = "moderation scorer failed; reply withheld"
        return out


class Moderator:
    def __init__(self, scorer: TextScorer, config: ModerationConfig) -> None:
        if not isinstance(scorer, TextScorer):
            raise ModerationUnavailable(f"{type(scorer).__name__} is not a TextScorer (needs .name and .score)")
        self.scorer = scorer
        self.threshold = config.threshold
        self.refusal = config.refusal
        self.granularity = config.stream_granularity
        # Scorers wrap torch models and fast tokenizers, neither promised safe across threads.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(getattr(self.scorer, "name", type(self.scorer).__name__))

    def check(self, text: str) -> ModerationResult:
        if not text.strip():
            return ModerationResult(False, 0.0, self.threshold, self.name)
        try:
            with self._lock:
                scores = self.scorer.score([text])
            score = float(scores[0])
            if len(scores) != 1 or not math.isfinite(score) or not 0.0 <= score <= 1.0:
                raise ValueError(f"expected one probability, got {scores!r}")
        except Exception as err:  # noqa: BLE001 - fail closed, whatever the scorer raised
            log.error("moderation scorer %s failed (%s: %s); blocking the reply", self.name, type(err).__name__, err)
            return ModerationResult(True, 1.0, self.threshold, self.name, error=type(err).__name__)
        return ModerationResult(score > self.threshold, score, self.threshold, self.name)

    def gate(self) -> "StreamGate":
        return StreamGate(self)


class StreamGate:
    """Decides how much of a growing reply may be sent; see the module docstring."""

    def __init__(self, moderator: Moderator) -> None:
        self.moderator = moderator
        self.released = 0
        self.last: ModerationResult | None = None

    def _release_point(self, text: str) -> int:
        if self.moderator.granularity == "reply":
            return self.released
        end = self.released
        for m in _SENTENCE_END.finditer(text, self.released):
            end = m.end()
        if end == self.released and len(text) - self.released > _MAX_HELD_CHARS:
            space = text.rfind(" ", self.released, len(text))
            end = space + 1 if space > self.released else end
        return end

    def update(self, text: str, *, final: bool) -> tuple[str, ModerationResult | None]:
        """(text that may be sent now, the blocking result if the reply must be refused)."""
        if not final:
            text = text.rstrip("\ufffd")  # an incomplete multi-byte character: wait for the rest
        end = len(text) if final else self._release_point(text)
        if end <= self.released:
            if final and self.last is None:  # an empty reply is still a scored reply
                self.last = self.moderator.check(text)
            return "", (self.last if self.last is not None and self.last.flagged else None)
        result = self.moderator.check(text[:end])
        self.last = result
        if result.flagged:
            return "", result
        delta, self.released = text[self.released:end], end
        return delta, None


    def check_extra(self, text: str) -> ModerationResult | None:
        """Score other model text sent along with the released reply (the alternative tokens of top_logprobs);
        the blocking result if it is flagged (then it is also ``last``), else None."""
        if not text.strip():
            return None
        result = self.moderator.check(text)
        if not result.flagged:
            return None
        self.last = result
        return result


def load_scorer(config: RunConfig) -> TextScorer:
    """The scorer named by ``service.moderation.scorer``; ModerationUnavailable with the reason otherwise."""
    spec = config.service.moderation.scorer
    try:
        if spec == "default":
            try:
                from evals.scorers import load_toxicity_scorer  # type: ignore[attr-defined]
            except ImportError:
                raise ModerationUnavailable(
                    "evals.scorers.load_toxicity_scorer is not available; set service.moderation.scorer to "
                    "'package.module:factory'") from None
            scorer = load_toxicity_scorer(getattr(config.evals, "toxicity_scorer", None))
        else:
            module_name, _, attr = spec.partition(":")
            if not module_name or not attr:
                raise ModerationUnavailable(f"service.moderation.scorer {spec!r}: expected 'default' or "
                                            f"'package.module:factory'")
            factory = getattr(importlib.import_module(module_name), attr)
            scorer = factory(**config.service.moderation.scorer_args)
    except ModerationUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to build the scorer means: do not serve
        raise ModerationUnavailable(f"cannot load moderation scorer {spec!r}: {type(err).__name__}: {err}") from None
    if not isinstance(scorer, TextScorer):
        raise ModerationUnavailable(f"moderation scorer {spec!r} gave a {type(scorer).__name__}, not a TextScorer")
    return scorer
