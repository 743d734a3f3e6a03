"""What each KPI rule means, evaluated on one tuned and one base measurement (docs/POLICY.md).

Bounds (max, min, ratio and delta to base) compare point estimates: they are product requirements. The
non-regression rule compares the two arms through a confidence interval on the difference tuned - base:

- both arms are proportions with counts (``count``/``n``, value == count/n): Newcombe's hybrid score interval
  for two independent proportions (Newcombe 1998, method 10), i.e. MOVER on the two Wilson intervals;
- otherwise: MOVER (Zou & Donner 2008) from each arm's own reported interval (e.g. a bootstrap ci95).

``beats_arm`` compares the tuned model with another evaluated arm (the prompted base: the base model with a
safety system prompt) by point estimate or through the same interval on tuned - arm.

Both treat the arms as independent. They are usually the same prompts (paired), which makes the real
difference less noisy, so these intervals are conservative: fewer blocks under ``block_if_significant_regression``,
fewer passes under ``require_significant_improvement``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from evals.stats import wilson_interval
from harmgate.config import KPI, BeatsArm, NonRegression

_EPS = 1e-12
_Z95 = 1.959963984540054


class BadMetric(ValueError):
    """A metric record the gate cannot read (no numeric value, malformed interval or counts)."""


@dataclass(frozen=True)
class Measurement:
    value: float
    n: int | None = None
    count: int | None = None
    ci95: tuple[float, float] | None = None

    @classmethod
    def from_record(cls, raw: Any, where: str) -> "Measurement":
        """``{value, n, count?, ci95?}`` as the suites write it; ``where`` names the record in errors."""
        if not isinstance(raw, dict):
            raise BadMetric(f"{where}: expected a mapping with 'value', got {type(raw).__name__}")
        value = raw.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadMetric(f"{where}: 'value' must be a finite number, got {value!r}")
        n, count, ci = raw.get("n"), raw.get("count"), raw.get("ci95")
        if ci is not None:
            if (not isinstance(ci, (list, tuple)) or len(ci) != 2
                    or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci) or ci[0] > ci[1]):
                raise BadMetric(f"{where}: 'ci95' must be [low, high] with low <= high, got {ci!r}")
            ci = (float(ci[0]), float(ci[1]))
        return cls(float(value), n if isinstance(n, int) else None, count if isinstance(count, int) else None, ci)

    @property
    def is_proportion(self) -> bool:
        return (self.n is not None and self.count is not None and self.n > 0 and 0 <= self.count <= self.n
                and abs(self.value - self.count / self.n) < 1e-9)

    def interval(self, confidence: float) -> tuple[float, float] | None:
        """Wilson from the counts when it is a proportion, else the reported ci95 (rescaled for other levels)."""
        if self.is_proportion:
            return wilson_interval(self.count, self.n, z=_z(confidence))  # type: ignore[arg-type]
        if self.ci95 is None:
            return None
        if abs(confidence - 0.95) < 1e-9:
            return self.ci95
        # Only a 95% interval was reported: scale its half-widths (normal approximation).
        scale = _z(confidence) / _Z95
        return self.value - (self.value - self.ci95[0]) * scale, self.value + (self.ci95[1] - self.value) * scale


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "confidence": self.confidence, "method": self.method}


@dataclass(frozen=True)
class RuleResult:
    rule: str               # the policy key: max, max_ratio_to_base, non_regression, ...
    bound: str              # human-readable: "<= 0.5 x base"
    threshold: float | None  # what the tuned value was compared with (None for the interval rule)
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "bound": self.bound, "threshold": self.threshold, "passed": self.passed,
                "detail": self.detail}


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _distance_interval(interval: tuple[float, float], target: float) -> tuple[float, float]:
    low, high = interval[0] - target, interval[1] - target
    if low <= 0 <= high:
        return 0.0, max(-low, high)
    return tuple(sorted((abs(low), abs(high))))  # type: ignore[return-value]


def difference_interval(tuned: Measurement, base: Measurement, confidence: float = 0.95,
                        target: float | None = None) -> Interval | None:
    """Interval for tuned - base (or, with a target, for |tuned - target| - |base - target|); None: no intervals.

    MOVER: L = d - sqrt((t - l_t)^2 + (u_b - b)^2), U = d + sqrt((u_t - t)^2 + (b - l_b)^2).
    """
    it, ib = tuned.interval(confidence), base.interval(confidence)
    if it is None or ib is None:
        return None
    t, b = tuned.value, base.value
    if target is not None:
        t, b = abs(t - target), abs(b - target)
        it, ib = _distance_interval(it, target), _distance_interval(ib, target)
    d = t - b
    low = d - math.sqrt((t - it[0]) ** 2 + (ib[1] - b) ** 2)
    high = d + math.sqrt((it[1] - t) ** 2 + (b - ib[0]) ** 2)
    if tuned.is_proportion and base.is_proportion:
        how = "newcombe score interval" if target is None else "mover on wilson intervals, distance to target"
    else:
        how = "mover on reported intervals" + (", distance to target" if target is not None else "")
    return Interval(low, high, confidence, how)


def compared(kpi: KPI, value: float) -> float:
    """What the bounds apply to: the value, or its distance to the KPI's target."""
    return value if kpi.target is None else abs(value - kpi.target)


def bound_rules(kpi: KPI, base: float | None) -> list[tuple[str, str, str, float | None]]:
    """(rule, description, comparison, threshold); threshold None when the base is needed but missing."""
    out: list[tuple[str, str, str, float | None]] = []
    if kpi.max is not None:
        out.append(("max", f"<= {kpi.max:g}", "<=", kpi.max))
    if kpi.min is not None:
        out.append(("min", f">= {kpi.min:g}", ">=", kpi.min))
    relative = [("max_ratio_to_base", kpi.max_ratio_to_base, "<=", "x base", lambda r, b: r * b),
                ("min_ratio_to_base", kpi.min_ratio_to_base, ">=", "x base", lambda r, b: r * b),
                ("max_increase_over_base", kpi.max_increase_over_base, "<=", "", lambda r, b: b + r),
                ("max_decrease_from_base", kpi.max_decrease_from_base, ">=", "", lambda r, b: b - r)]
    for rule, setting, op, unit, threshold in relative:
        if setting is None:
            continue
        if unit:
            desc = f"{op} {setting:g} x base"
        else:
            desc = f"{op} base {'+' if op == '<=' else '-'} {setting:g}"
        out.append((rule, desc, op, None if base is None else threshold(setting, base)))
    return out


def describe(kpi: KPI) -> list[str]:
    """The KPI's rules as short text, e.g. ['<= 0.1', '<= 0.5 x base', 'no significant regression']."""
    texts = [desc for _, desc, _, _ in bound_rules(kpi, 0.0)]
    if kpi.non_regression is not None:
        texts.append(_non_regression_text(kpi.non_regression))
    if kpi.beats_arm is not None:
        texts.append(_beats_text(kpi.beats_arm))
    if kpi.target is not None:
        texts = [f"distance to {kpi.target:g}: {t}" for t in texts]
    return texts


def _non_regression_text(rule: NonRegression) -> str:
    pct = f"{rule.confidence:.0%}"
    if rule.mode == "block_if_significant_regression":
        return f"no significant regression ({pct}" + (f", margin {rule.margin:g})" if rule.margin else ")")
    return f"significant improvement ({pct}" + (f", > {rule.margin:g})" if rule.margin else ")")


def _beats_text(rule: BeatsArm) -> str:
    if rule.mode == "point":
        return f"at least as good as {rule.arm}" + (f" by {rule.margin:g}" if rule.margin else "")
    return f"significantly better than {rule.arm} ({rule.confidence:.0%}" + (
        f", by > {rule.margin:g})" if rule.margin else ")")


def _beats_arm(kpi: KPI, rule: BeatsArm, tuned: Measurement, other: Measurement | None) -> RuleResult:
    desc = _beats_text(rule)
    if other is None:
        return RuleResult("beats_arm", desc, None, False,
                          f"needs the {rule.arm} arm's value, which is missing from the eval summary")
    lower = kpi.direction == "lower"  # with a target, the distance: also lower
    if rule.mode == "point":
        t, o = compared(kpi, tuned.value), compared(kpi, other.value)
        threshold = o - rule.margin if lower else o + rule.margin
        ok = t <= threshold + _EPS if lower else t >= threshold - _EPS
        what = "tuned" if kpi.target is None else f"|tuned - {kpi.target:g}|"
        return RuleResult("beats_arm", desc, threshold, ok,
                          f"{what} = {t:.4g} vs {rule.arm} {o:.4g}: {'meets' if ok else 'violates'} {desc}")
    iv = difference_interval(tuned, other, rule.confidence, kpi.target)
    if iv is None:
        return RuleResult("beats_arm", desc, None, False,
                          f"cannot compare with the {rule.arm} arm: the metric has neither counts (count, n) nor a "
                          f"ci95 interval in both arms")
    imp_low, imp_high = (-iv.high, -iv.low) if lower else (iv.low, iv.high)
    ok = imp_low > rule.margin + _EPS
    return RuleResult("beats_arm", desc, None, ok,
                      f"improvement over {rule.arm} {rule.confidence:.0%} CI [{imp_low:+.3g}, {imp_high:+.3g}] "
                      f"({iv.method}): {'' if ok else 'not '}significantly better than {rule.arm}"
                      + (f" by more than {rule.margin:g}" if rule.margin else ""))


def _non_regression(kpi: KPI, rule: NonRegression, tuned: Measurement,
                    base: Measurement | None) -> tuple[RuleResult, Interval | None]:
    pct = f"{rule.confidence:.0%}"
    desc = _non_regression_text(rule)
    if base is None:
        return RuleResult("non_regression", desc, None, False,
                          "needs the base arm's value, which is missing from the eval summary"), None
    iv = difference_interval(tuned, base, rule.confidence, kpi.target)
    if iv is None:
        return RuleResult("non_regression", desc, None, False,
                          "cannot compare with the base: the metric has neither counts (count, n) nor a ci95 "
                          "interval in both arms"), None
    better_lower = kpi.direction == "lower"  # with a target, the distance: also lower
    # Regression = how much worse the tuned model is, in metric units (positive = worse).
    reg_low, reg_high = (iv.low, iv.high) if better_lower else (-iv.high, -iv.low)
    shown = f"regression {pct} CI [{reg_low:+.3g}, {reg_high:+.3g}] ({iv.method})"
    if rule.mode == "block_if_significant_regression":
        passed = not reg_low > rule.margin + _EPS
        detail = (f"{shown}: {'not ' if passed else ''}significantly worse than base"
                  + (f" by more than {rule.margin:g}" if rule.margin else ""))
    else:
        imp_low = -reg_high
        passed = imp_low > rule.margin + _EPS
        detail = (f"improvement {pct} CI [{imp_low:+.3g}, {-reg_low:+.3g}] ({iv.method}): "
                  f"{'' if passed else 'not '}significantly better than base"
                  + (f" by more than {rule.margin:g}" if rule.margin else ""))
    return RuleResult("non_regression", desc, None, passed, detail), iv


def evaluate_rules(kpi: KPI, tuned: Measurement, base: Measurement | None,
                   others: dict[str, Measurement | None] | None = None) -> tuple[list[RuleResult], Interval | None]:
    """Every rule the KPI sets, in policy order (bounds, non-regression, beats_arm), and the tuned - base
    interval. ``others``: the other arms' measurements by arm name (``beats_arm`` reads its arm there)."""
    t = compared(kpi, tuned.value)
    b = None if base is None else compared(kpi, base.value)
    what = "tuned" if kpi.target is None else f"|tuned - {kpi.target:g}|"
    results = []
    for rule, desc, op, threshold in bound_rules(kpi, b):
        if threshold is None:
            results.append(RuleResult(rule, desc, None, False, "needs the base arm's value, which is missing "
                                                                 "from the eval summary"))
            continue
        ok = t <= threshold + _EPS if op == "<=" else t >= threshold - _EPS
        results.append(RuleResult(rule, desc, threshold, ok,
                                  f"{what} = {t:.4g} {'meets' if ok else 'violates'} {desc} (threshold {threshold:.4g})"))
    interval = None
    if kpi.non_regression is not None:
        result, interval = _non_regression(kpi, kpi.non_regression, tuned, base)
        results.append(result)
    elif base is not None:  # still report the difference interval for the table and the dashboard
        interval = difference_interval(tuned, base, 0.95, kpi.target)
    if kpi.beats_arm is not None:
        arm = kpi.beats_arm.arm
        results.append(_beats_arm(kpi, kpi.beats_arm, tuned, base if arm == "base" else (others or {}).get(arm)))
    return results, interval
