"""Metrics with confidence intervals: every number a suite reports carries a seeded bootstrap 95% interval.

The bootstrap is scipy's (``scipy.stats.bootstrap``, percentile method): it works for any statistic (a rate, a
perplexity that is a ratio of sums, BBQ's bias score, the largest gap between groups) without a formula per
metric. The *unit* resampled is what the sample was drawn as: prompts (not the k generations of one prompt),
pairs (not the two sentences of a pair), and, for statistics over several groups, each group on its own
(a stratified bootstrap), because the groups were sampled separately.

Rates also get a Wilson score interval (``wilson95``): near 0 or 1 with few samples the percentile bootstrap
collapses to a point (0 of 40 resamples to [0, 0]), and Wilson does not. The gate's interval-aware checks can
use either; ``ci95`` is always the bootstrap one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

CI_METHOD = "percentile bootstrap (scipy.stats.bootstrap)"


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are computed; recorded in every suite result (``ci``)."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return {"method": CI_METHOD, **asdict(self)}


def _clean(x: float | None) -> float | None:
    """JSON has no NaN: an undefined value is None."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def bootstrap_ci(samples: Sequence[Sequence[float] | np.ndarray], statistic: Callable[..., float], *,
                 paired: bool = False, vectorized: bool = False,
                 boot: Bootstrap = Bootstrap()) -> list[float | None] | None:
    """Percentile interval of ``statistic(*samples)``.

    paired=True: the arrays are columns of one data set and rows are resampled together (e.g. per-example
    NLL and token counts). paired=False: each array is a separate group resampled on its own.
    vectorized: ``statistic`` takes an ``axis`` keyword and handles a batch of resamples at once (fast).
    None when an interval is undefined: a group with fewer than two observations.
    """
    from scipy.stats import bootstrap

    arrays = tuple(np.asarray(s, dtype=float) for s in samples)
    if not arrays or any(a.ndim != 1 or a.size < 2 for a in arrays):
        return None
    with warnings.catch_warnings():
        # A constant sample (all 0: nothing complied) has a zero-width interval; scipy warns, which is fine.
        warnings.simplefilter("ignore")
        res = bootstrap(arrays, statistic, paired=paired, vectorized=vectorized, n_resamples=boot.n_resamples,
                        confidence_level=boot.confidence, method="percentile",
                        random_state=np.random.default_rng(boot.seed))
    return [_clean(res.confidence_interval.low), _clean(res.confidence_interval.high)]


def metric(value: float | None, n: int, ci95: list[float | None] | None, **extra: Any) -> dict[str, Any]:
    """The one metric shape every suite writes and the gate reads: {value, n, ci95, ...extra}."""
    return {"value": _clean(value), "n": int(n), "ci95": ci95, **extra}


def mean_metric(values: Sequence[float], boot: Bootstrap = Bootstrap()) -> dict[str, Any]:
    """Mean of per-unit values (one value per prompt/pair), interval by resampling the units."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return metric(None, 0, None)
    return metric(float(arr.mean()), arr.size, bootstrap_ci([arr], np.mean, vectorized=True, boot=boot))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_metric(successes: int | Sequence[bool], n: int | None = None, boot: Bootstrap = Bootstrap()) -> dict[str, Any]:
    """Share of successes: from a count and n, or from one flag per unit. Keeps ``count`` for exact tests."""
    if n is None:
        flags = [bool(f) for f in successes]  # type: ignore[union-attr]
        successes, n = sum(flags), len(flags)
    successes = int(successes)  # type: ignore[arg-type]
    if n == 0:
        return metric(None, 0, None, count=0, wilson95=None)
    # A rate's bootstrap depends only on the counts, so the flags can be rebuilt from them.
    flags_arr = np.concatenate([np.ones(successes), np.zeros(n - successes)])
    return metric(successes / n, n, bootstrap_ci([flags_arr], np.mean, vectorized=True, boot=boot), count=successes,
                  wilson95=list(wilson_interval(successes, n)))


def statistic_metric(samples: Sequence[Sequence[float]], statistic: Callable[..., float], *, n: int,
                     paired: bool = False, boot: Bootstrap = Bootstrap(), **extra: Any) -> dict[str, Any]:
    """Any statistic of one or more samples, e.g. a ratio of sums (paired) or a gap between groups."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if not arrays or any(a.size == 0 for a in arrays):
        return metric(None, n, None, **extra)
    value = statistic(*arrays)
    return metric(value, n, bootstrap_ci(arrays, statistic, paired=paired, boot=boot), **extra)


def max_gap(*groups: np.ndarray) -> float:
    """Largest difference between two group means."""
    means = [float(np.mean(g)) for g in groups]
    return max(means) - min(means)
