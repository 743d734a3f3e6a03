"""Text scorers: toxicity and friends. A scorer maps texts to probabilities in [0, 1].

Suites (evals/suites) and the service's moderation (serve/) depend only on the `TextScorer` protocol, so a
Detoxify hub checkpoint, a locally trained Detoxify-format checkpoint or any other classifier can be swapped in.

- ``load_toxicity_scorer(cfg)``: the scorer ``evals.toxicity_scorer`` names (detoxify_scorer.py)
- ``harmgate scorer train``: builds harmgate's default checkpoint (train.py; data: datasets.py, hate_sources.py,
- the refusal judge's trained heads (refusal_head.py; the judges are evals/judge.py, validation evals/judge_validation.py)
"""

from evals.scorers.base import TextScorer
from evals.scorers.detoxify_scorer import DetoxifyScorer, ToxicityScorerError, load_toxicity_scorer

__all__ = ["DetoxifyScorer", "TextScorer", "ToxicityScorerError", "load_toxicity_scorer"]
