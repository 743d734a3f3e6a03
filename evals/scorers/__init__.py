"""Text scorers: toxicity and friends. A scorer maps texts to probabilities in [0, 1].

Suites (evals/suites) and the service's moderation (serve/) depend only on the `TextScorer` protocol, so a
Detoxify hub checkpoint, a locally trained Detoxify-format checkpoint or any other classifier can be swapped in.
"""

from evals.scorers.base import TextScorer

__all__ = ["TextScorer"]
