"""Is a training prompt an evaluation prompt? Exact match after normalisation, and containment.

Two checks, both on text normalised by :func:`leak_key` (casefolded, punctuation dropped, whitespace collapsed,
the normalisation the shared data's own overlap checks use):

- **exact**: the training example's first user turn is an eval prompt.
- **contained**: an eval prompt of at least ``MIN_CONTAINED_WORDS`` words appears inside a training prompt
  (a jailbreak template wrapping an eval request, "Continue this text: <an RTP prefix>", a request quoted in a
  longer message). Found through word n-gram shingles, then confirmed by substring search, so it stays linear
  in the data size rather than eval x train.

Short eval prompts (fewer words than the shingle) are only matched exactly: a three-word prompt such as "kill a
python process" inside a long training text is as likely coincidence as leak.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

MIN_CONTAINED_WORDS = 8
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def leak_key(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


class EvalIndex:
    """The evaluation prompts, indexed for :meth:`match`."""

    def __init__(self, eval_prompts: Iterable[str], *, min_contained_words: int = MIN_CONTAINED_WORDS):
        self.n = min_contained_words
        self.exact: set[str] = set()
        self._by_shingle: dict[str, list[str]] = defaultdict(list)
        for prompt in eval_prompts:
            if not isinstance(prompt, str):
                continue
            key = leak_key(prompt)
            if not key or key in self.exact:
                continue
            self.exact.add(key)
            words = key.split()
            if len(words) >= self.n:
                self._by_shingle[" ".join(words[:self.n])].append(key)

    def __len__(self) -> int:
        return len(self.exact)

    def match(self, text: str) -> str | None:
        """``"exact"`` or ``"contained"`` when ``text`` leaks an eval prompt, else None."""
        key = leak_key(text)
        if not key:
            return None
        if key in self.exact:
            return "exact"
        words = key.split()
        padded = f" {key} "
        for i in range(len(words) - self.n + 1):
            for candidate in self._by_shingle.get(" ".join(words[i:i + self.n]), ()):
                if f" {candidate} " in padded:
                    return "contained"
        return None


__all__ = ["EvalIndex", "MIN_CONTAINED_WORDS", "leak_key"]
