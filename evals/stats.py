"""Confidence intervals for the rates the gate compares.

Wilson score intervals rather than the normal approximation: suites are small (tens to hundreds of prompts)
and rates sit near 0 or 1, where the normal interval collapses or leaves [0, 1].
"""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_metric(successes: int, n: int) -> dict:
    low, high = wilson_interval(successes, n)
    return {"value": successes / n if n else None, "n": n, "count": successes, "ci95": [low, high]}
