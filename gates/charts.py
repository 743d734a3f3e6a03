"""Inline SVG charts for the dashboard: no JavaScript, no fonts or images to fetch, text that stays searchable.

Every piece of text that reaches the SVG goes through ``escape``: group names and labels come from datasets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from markupsafe import Markup, escape

BASE_COLOUR = "#8a94a6"
PROMPTED_COLOUR = "#8250df"  # the prompted base (base model + safety system prompt)
BETTER, WORSE, NEUTRAL = "#1a7f37", "#cf222e", "#0969da"
THRESHOLD_COLOUR = "#bf8700"


@dataclass(frozen=True)
class Point:
    """A value with an optional interval."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def extent(self) -> list[float]:
        return [v for v in (self.value, self.low, self.high) if v is not None and math.isfinite(v)]


@dataclass(frozen=True)
class Axis:
    low: float
    high: float

    @classmethod
    def fit(cls, points: Sequence[Point], extra: Sequence[float] = (), unit_interval: bool = False) -> "Axis":
        """An axis covering every value and interval; rates (all within [0, 1]) get the whole [0, 1]."""
        values = [v for p in points for v in p.extent()] + [v for v in extra if v is not None and math.isfinite(v)]
        if not values:
            return cls(0.0, 1.0)
        if unit_interval:  # rates: always from 0, to 1 or to a bound drawn beyond it
            return cls(0.0, max(1.0, *values) * (1.0 if max(values) <= 1 else 1.05))
        low, high = min(values), max(values)
        pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
        low = 0.0 if low >= 0 and low - pad < 0 else low - pad
        return cls(low, high + pad)

    def scale(self, v: float, x0: float, x1: float) -> float:
        span = self.high - self.low or 1.0
        return x0 + (min(max(v, self.low), self.high) - self.low) / span * (x1 - x0)


def fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if v != 0 and (abs(v) >= 1000 or abs(v) < 0.001):
        return f"{v:.3g}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def colour_for(base: float | None, tuned: float | None, direction: str | None) -> str:
    if base is None or tuned is None or direction not in ("lower", "higher") or tuned == base:
        return NEUTRAL
    better = tuned < base if direction == "lower" else tuned > base
    return BETTER if better else WORSE


def _whisker(p: Point, axis: Axis, x0: float, x1: float, y: float, colour: str, label: str, filled: bool) -> str:
    if p.value is None:
        return ""
    parts = []
    if p.low is not None and p.high is not None:
        a, b = axis.scale(p.low, x0, x1), axis.scale(p.high, x0, x1)
        parts.append(f'<line x1="{a:.1f}" y1="{y}" x2="{b:.1f}" y2="{y}" stroke="{colour}" stroke-width="2.5" '
                     f'stroke-linecap="round"/>')
    cx = axis.scale(p.value, x0, x1)
    fill = colour if filled else "#fff"
    interval = "" if p.low is None else f" (95% CI {fmt(p.low)} to {fmt(p.high)})"
    parts.append(f'<circle cx="{cx:.1f}" cy="{y}" r="4.5" fill="{fill}" stroke="{colour}" stroke-width="2">'
                 f'<title>{escape(label)}: {fmt(p.value)}{escape(interval)}</title></circle>')
    return "".join(parts)


def interval_pair(base: Point | None, tuned: Point | None, axis: Axis, *, direction: str | None = None,
                  thresholds: Sequence[tuple[float, str]] = (), width: int = 300, ticks: bool = True,
                  prompted: Point | None = None) -> Markup:
    """Base (hollow, grey), the prompted base if given (hollow, purple) and tuned (filled; green better, red
    worse than base) with their intervals on one axis."""
    extra = 14 if prompted is not None else 0
    height = (46 if ticks else 32) + extra
    y_base, y_prompted, y_tuned = 9, 23, 23 + extra  # base on top, tuned last; tick labels (if any) below
    x0, x1 = 10.0, width - 10.0
    parts = [f'<svg class="pair" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{x0}" y1="{y_tuned + 7}" x2="{x1}" y2="{y_tuned + 7}" stroke="#d0d7de"/>']
    for value, label in thresholds:
        if value is None or not (axis.low <= value <= axis.high):
            continue
        x = axis.scale(value, x0, x1)
        parts.append(f'<line x1="{x:.1f}" y1="2" x2="{x:.1f}" y2="{y_tuned + 7}" stroke="{THRESHOLD_COLOUR}" '
                     f'stroke-width="1.5" stroke-dasharray="3 2"><title>{escape(label)}: {fmt(value)}</title></line>')
    tuned_colour = colour_for(base.value if base else None, tuned.value if tuned else None, direction)
    if base is not None:
        parts.append(_whisker(base, axis, x0, x1, y_base, BASE_COLOUR, "base", False))
    if prompted is not None:
        parts.append(_whisker(prompted, axis, x0, x1, y_prompted, PROMPTED_COLOUR, "prompted base", False))
    if tuned is not None:
        parts.append(_whisker(tuned, axis, x0, x1, y_tuned, tuned_colour, "tuned", True))
    if ticks:
        parts.append(f'<text x="{x0}" y="{height - 1}" class="tick">{fmt(axis.low)}</text>'
                     f'<text x="{x1}" y="{height - 1}" class="tick" text-anchor="end">{fmt(axis.high)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(xs: Sequence[float], ys: Sequence[float], *, x_label: str, y_label: str, width: int = 720,
               height: int = 260, secondary: Sequence[float] | None = None, secondary_label: str = "") -> Markup:
    """A line with markers (tooltips on each point) and an optional secondary series on its own right axis."""
    if not xs:
        return Markup("")
    left, right, top, bottom = 56.0, width - (56.0 if secondary else 16.0), 14.0, height - 40.0
    x_axis = Axis(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1)
    y_axis = Axis.fit([Point(y) for y in ys])

    def px(x: float) -> float:
        return x_axis.scale(x, left, right)

    def py(y: float, axis: Axis = y_axis) -> float:
        return axis.scale(y, bottom, top)

    parts = [f'<svg class="line" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg">']
    for i in range(5):  # horizontal grid with labels
        v = y_axis.low + (y_axis.high - y_axis.low) * i / 4
        y = py(v)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eaeef2"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt(v)}</text>')
    for x in _x_ticks(x_axis):
        parts.append(f'<text x="{px(x):.1f}" y="{bottom + 16}" class="tick" text-anchor="middle">{x:g}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#8c959f"/>'
                 f'<text x="{(left + right) / 2:.1f}" y="{height - 4}" class="axis-label" '
                 f'text-anchor="middle">{escape(x_label)}</text>'
                 f'<text x="14" y="{(top + bottom) / 2:.1f}" class="axis-label" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + bottom) / 2:.1f})">{escape(y_label)}</text>')
    if secondary:
        s_axis = Axis.fit([Point(v) for v in secondary])
        path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(v, s_axis):.1f}" for i, (x, v) in
                        enumerate(zip(xs, secondary)))
        parts.append(f'<path d="{path}" fill="none" stroke="{BASE_COLOUR}" stroke-width="1.5" stroke-dasharray="4 3"/>'
                     f'<text x="{right + 6}" y="{py(s_axis.high, s_axis) + 4:.1f}" class="tick">{fmt(s_axis.high)}</text>'
                     f'<text x="{right + 6}" y="{py(s_axis.low, s_axis):.1f}" class="tick">{fmt(s_axis.low)}</text>'
                     f'<text x="{width - 10}" y="{(top + bottom) / 2:.1f}" class="axis-label" text-anchor="middle" '
                     f'transform="rotate(90 {width - 10} {(top + bottom) / 2:.1f})">{escape(secondary_label)}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(zip(xs, ys)))
    parts.append(f'<path d="{path}" fill="none" stroke="{NEUTRAL}" stroke-width="2.2"/>')
    for x, y in zip(xs, ys):
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{NEUTRAL}">'
                     f'<title>{escape(x_label)} {x:g}: {escape(y_label)} {fmt(y)}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _x_ticks(axis: Axis, count: int = 6) -> list[float]:
    span = axis.high - axis.low
    step = 10 ** math.floor(math.log10(span / count)) if span > 0 else 1
    for mult in (1, 2, 5, 10):
        if span / (step * mult) <= count:
            step *= mult
            break
    first = math.ceil(axis.low / step) * step
    return [first + i * step for i in range(int((axis.high - first) / step) + 1)]
