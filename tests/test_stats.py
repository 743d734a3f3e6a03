"""Bootstrap intervals (evals.stats): seeded, honest about coverage, right unit of resampling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evals.stats import (Bootstrap, bootstrap_ci, max_gap, mean_metric, metric, rate_metric, statistic_metric,
                         wilson_interval)


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(1).normal(size=60)
    a = mean_metric(values, Bootstrap(seed=7))["ci95"]
    b = mean_metric(values, Bootstrap(seed=7))["ci95"]
    c = mean_metric(values, Bootstrap(seed=8))["ci95"]
    assert a == b
    assert a != c


def test_interval_contains_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = mean_metric(rng.normal(size=25))
    large = mean_metric(rng.normal(size=400))
    for m in (small, large):
        assert m["ci95"][0] <= m["value"] <= m["ci95"][1]
    width = lambda m: m["ci95"][1] - m["ci95"][0]  # noqa: E731
    # standard error shrinks like 1/sqrt(n): 16x the data, about a quarter of the width
    assert width(large) < 0.4 * width(small)


def test_coverage_of_a_known_rate_is_near_95_percent():
    """Bernoulli(0.3), n = 80: the percentile bootstrap should cover 0.3 about 95% of the time."""
    rng = np.random.default_rng(42)
    boot = Bootstrap(n_resamples=400)
    covered = 0
    trials = 150
    for t in range(trials):
        k = int(rng.binomial(80, 0.3))
        low, high = rate_metric(k, 80, Bootstrap(n_resamples=boot.n_resamples, seed=t))["ci95"]
        covered += low <= 0.3 <= high
    # 150 trials: the 95% binomial range of the coverage count is about 136..148
    assert 0.88 <= covered / trials <= 0.995


def test_rate_metric_shape_counts_and_wilson():
    m = rate_metric([True, False, False, True], boot=Bootstrap())
    assert m["value"] == 0.5 and m["n"] == 4 and m["count"] == 2
    assert m["wilson95"] == pytest.approx(list(wilson_interval(2, 4)))
    assert rate_metric(2, 4) == m  # from counts or from flags: the same thing
    zero = rate_metric(0, 40)
    assert zero["ci95"] == [0.0, 0.0]       # the percentile bootstrap collapses at 0 ...
    assert zero["wilson95"][1] > 0.05       # ... Wilson does not, which is why rates carry both


def test_undefined_intervals_are_none_not_nan():
    assert rate_metric(0, 0)["value"] is None
    assert mean_metric([1.0])["ci95"] is None          # one observation: no interval
    assert mean_metric([])["value"] is None
    assert metric(float("nan"), 3, None)["value"] is None
    json.dumps([rate_metric(0, 0), mean_metric([1.0]), metric(float("inf"), 1, None)], allow_nan=False)


def test_paired_ratio_resamples_rows_together():
    """Perplexity = exp(sum nll / sum tokens): resampling the two columns independently would be wrong."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(5, 200, size=50).astype(float)
    nll = tokens * 2.0  # every example has NLL/token = 2 exactly
    ppl = lambda n, t: math.exp(n.sum() / t.sum())  # noqa: E731
    paired = statistic_metric([nll, tokens], ppl, n=50, paired=True)
    assert paired["value"] == pytest.approx(math.exp(2.0))
    assert paired["ci95"] == pytest.approx([math.exp(2.0)] * 2)  # no variation in the per-token NLL
    unpaired = bootstrap_ci([nll, tokens], ppl, paired=False)
    assert unpaired[1] - unpaired[0] > 0.1  # independent resampling invents variation


def test_stratified_gap_between_groups():
    a, b, c = np.full(20, 0.1), np.full(20, 0.4), np.full(20, 0.25)
    m = statistic_metric([a, b, c], max_gap, n=60)
    assert m["value"] == pytest.approx(0.3)
    assert m["ci95"] == pytest.approx([0.3, 0.3])
    noisy = statistic_metric([np.r_[a, 1.0], np.r_[b, 0.0]], max_gap, n=42)
    assert noisy["ci95"][0] < noisy["value"] < noisy["ci95"][1]
    assert statistic_metric([a, [0.5]], max_gap, n=21)["ci95"] is None  # a one-sample group: no interval
