"""Text keys shared by the mixture (dedup) and the feedback export: one small module both import, so neither
imports the other at load time (this broke the align.feedback <-> align.mixture import circle)."""

from __future__ import annotations


def normalise(text: str) -> str:
    """Casefolded, whitespace-collapsed text: the key for dedup (align.leakcheck has the leak check's own key)."""
    return " ".join(text.casefold().split())


__all__ = ["normalise"]
