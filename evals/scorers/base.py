"""The contract every scorer meets."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class TextScorer(Protocol):
    name: str

    def score(self, texts: list[str]) -> list[float]:
        """One probability in [0, 1] per text (for toxicity: the probability the text is toxic)."""
        ...
