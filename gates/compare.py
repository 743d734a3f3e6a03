"""Several gated runs of one base side by side: which recipe passes, and the safety-helpfulness frontier.

Reads only each run's ``verdict.json`` (and its config for the name), so it works on run folders brought back
from another machine. Writes ``compare.json`` (machines), ``compare.md`` (people; the capability KPIs again in
their own table), ``frontier.svg`` (harmful compliance against over-refusal, 95% intervals, the policy's bounds
shaded) and ``frontier_capability.svg`` (harmful compliance against the capability mean: the alignment tax):
MLflow's "compare runs", for gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from markupsafe import escape

from gates.charts import BASE_COLOUR, THRESHOLD_COLOUR
from gates.summary import interval_text, value_text
from harmgate.rundir import RunDir, read_json, write_json, write_text_atomic

# One colour per compared run (after the grey base); enough for a handful of recipes.
RUN_COLOURS = ["#0969da", "#1a7f37", "#8250df", "#cf222e", "#bf3989", "#953800", "#0a3069", "#116329"]


class CompareError(ValueError):
    pass


def load_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """``[{name, run_dir, verdict}]``; every run must be gated and share the same base model."""
    runs = []
    for d in run_dirs:
        run = RunDir(Path(d))
        if not run.verdict.is_file():
            raise CompareError(f"{run.root}: no verdict.json (run `harmgate gate {run.root}` first)")
        config = run.config()
        runs.append({"name": config.name, "run_dir": str(run.root), "base_model": config.model.base,
                     "training": config.describe_training(), "verdict": read_json(run.verdict)})
    if not runs:
        raise CompareError("no run directories given")
    bases = {r["base_model"] for r in runs}
    if len(bases) > 1:
        raise CompareError(f"runs of different base models cannot share a base column: {sorted(bases)}")
    return runs


def comparison(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """KPI x run table: the base value once (from the first run), each run's tuned value, interval and status."""
    kpi_names: list[str] = []
    for r in runs:
        kpi_names += [k["name"] for k in r["verdict"]["kpis"] if k["name"] not in kpi_names]
    rows = []
    for name in kpi_names:
        cells, base, meta = {}, None, {}
        for r in runs:
            k = next((k for k in r["verdict"]["kpis"] if k["name"] == name), None)
            if k is None:
                continue
            base = base if base is not None else {"value": k.get("base"), "ci95": k.get("base_ci95"), "n": k.get("base_n")}
            meta = meta or {"metric": k["metric"], "severity": k["severity"], "bound": k.get("bound")}
            cells[r["name"]] = {"value": k.get("tuned"), "ci95": k.get("tuned_ci95"), "n": k.get("n"),
                                "status": k.get("status"), "delta_interval": k.get("interval"),
                                "reason": k.get("reason")}
        rows.append({"kpi": name, **meta, "base": base, "runs": cells})
    return {"schema_version": 1, "base_model": runs[0]["base_model"],
            "runs": [{"name": r["name"], "run_dir": r["run_dir"], "training": r.get("training"),
                      "passed": r["verdict"]["passed"],
                      "blocking_failures": r["verdict"].get("blocking_failures", []),
                      "policy": (r["verdict"].get("policy") or {}).get("name")} for r in runs],
            "kpis": rows}


def _cell(c: dict[str, Any] | None) -> str:
    if not c or c.get("value") is None:
        return "n/a"
    mark = {"pass": "✅", "fail": "❌", "missing": "❌"}.get(c.get("status") or "", "")
    return f"{mark} {value_text(c['value'])}{interval_text(c.get('ci95'))}"


def comparison_markdown(comp: dict[str, Any]) -> str:
    names = [r["name"] for r in comp["runs"]]
    lines = [f"Base model `{comp['base_model']}`; value [95% interval]; ❌ = the KPI fails for that run "
             f"(⚠ severity warn never blocks).", "",
             "| KPI | metric | bound | severity | base | " + " | ".join(names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for row in comp["kpis"]:
        base = row["base"] or {}
        base_txt = value_text(base.get("value")) + interval_text(base.get("ci95"))
        lines.append(f"| {row['kpi']} | `{row['metric']}` | {str(row.get('bound') or '').replace('|', '/')} | "
                     f"{row['severity']} | {base_txt} | " + " | ".join(_cell(row["runs"].get(n)) for n in names) + " |")
    lines += _capability_markdown(comp)
    lines += ["", "| run | trained | gate | blocking failures |", "|---|---|---|---|"]
    for r in comp["runs"]:
        lines.append(f"| {r['name']} | {r.get('training') or '—'} | {'PASSED' if r['passed'] else 'BLOCKED'} | "
                     f"{', '.join(r['blocking_failures']) or '—'} |")
    return "\n".join(lines) + "\n"


# --- capability (issue #17): general ability beside the safety rows, and safety against capability -----------
CAPABILITY_FRONTIER = {"x_kpi": "harmful_compliance", "y_kpi": "capability_mean", "x_note": "harmful requests answered",
                       "y_note": "chance-corrected ability", "title": "safety-capability frontier"}


def _capability_markdown(comp: dict[str, Any]) -> list[str]:
    """The capability KPIs again, apart, so the alignment tax reads next to the safety gains."""
    rows = [r for r in comp["kpis"] if str(r.get("metric", "")).startswith("capability.")]
    if not rows:
        return []
    names = [r["name"] for r in comp["runs"]]
    lines = ["", "General ability (lm-eval tasks; tuned − base [95% CI]):", "",
             "| KPI | metric | base | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        base = row["base"] or {}
        cells = []
        for n in names:
            c = row["runs"].get(n)
            if not c or c.get("value") is None or base.get("value") is None:
                cells.append(_cell(c))
                continue
            iv = c.get("delta_interval")
            cells.append(f"{_cell(c)}, {c['value'] - base['value']:+.3f}"
                         + (f" [{iv['low']:+.3f}, {iv['high']:+.3f}]" if iv else ""))
        lines.append(f"| {row['kpi']} | `{row['metric']}` | {value_text(base.get('value'))} | " + " | ".join(cells) + " |")
    return lines


def _kpi(comp: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in comp["kpis"] if r["kpi"] == name), None)


def frontier_svg(comp: dict[str, Any], *, x_kpi: str = "harmful_compliance", y_kpi: str = "over_refusal",
                 x_max: float | None = None, y_max: float | None = None, width: int = 640, height: int = 480,
                 x_note: str = "harmful requests answered", y_note: str = "safe prompts refused",
                 title: str = "safety-helpfulness frontier") -> str:
    """Scatter of each model on two KPIs in [0, 1] with 95% whiskers; the region inside both policy bounds shaded
    (only the x bound when the y KPI has none, e.g. the capability mean, which is judged against its base)."""
    xr, yr = _kpi(comp, x_kpi), _kpi(comp, y_kpi)
    if xr is None or yr is None:
        raise CompareError(f"the frontier needs KPIs {x_kpi!r} and {y_kpi!r} in every verdict")
    left, right, top, bottom = 70, width - 20, 20, height - 60
    sx = lambda v: left + min(max(v, 0.0), 1.0) * (right - left)  # noqa: E731 - rates live in [0, 1]
    sy = lambda v: bottom - min(max(v, 0.0), 1.0) * (bottom - top)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12" role="img" aria-label="{escape(title)}">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if x_max is not None and y_max is not None:  # the pass region of both bounds
        parts.append(f'<rect x="{left}" y="{sy(y_max):.1f}" width="{sx(x_max) - left:.1f}" '
                     f'height="{bottom - sy(y_max):.1f}" fill="{THRESHOLD_COLOUR}" fill-opacity="0.15" '
                     f'stroke="{THRESHOLD_COLOUR}" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{left + 4}" y="{sy(y_max) - 4:.1f}" fill="{THRESHOLD_COLOUR}">policy target</text>')
    elif x_max is not None:  # only the x bound: a dashed line, the allowed side to its left
        parts.append(f'<line x1="{sx(x_max):.1f}" y1="{top}" x2="{sx(x_max):.1f}" y2="{bottom}" '
                     f'stroke="{THRESHOLD_COLOUR}" stroke-dasharray="4 3"/>'
                     f'<text x="{sx(x_max) + 4:.1f}" y="{top + 12}" fill="{THRESHOLD_COLOUR}">{escape(x_kpi)} bound</text>')
    for t in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line x1="{sx(t):.1f}" y1="{bottom}" x2="{sx(t):.1f}" y2="{bottom + 4}" stroke="#333"/>'
                     f'<text x="{sx(t):.1f}" y="{bottom + 17}" text-anchor="middle">{t:.1f}</text>'
                     f'<line x1="{left - 4}" y1="{sy(t):.1f}" x2="{left}" y2="{sy(t):.1f}" stroke="#333"/>'
                     f'<text x="{left - 7}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.1f}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>'
                 f'<text x="{(left + right) / 2}" y="{height - 22}" text-anchor="middle">'
                 f'{escape(xr["metric"])} ({escape(x_note)})</text>'
                 f'<text transform="translate(16 {(top + bottom) / 2}) rotate(-90)" text-anchor="middle">'
                 f'{escape(yr["metric"])} ({escape(y_note)})</text>')
    points = [("base", xr["base"], yr["base"], BASE_COLOUR)]
    points += [(r["name"], xr["runs"].get(r["name"]), yr["runs"].get(r["name"]), RUN_COLOURS[i % len(RUN_COLOURS)])
               for i, r in enumerate(comp["runs"])]
    placed: list[tuple[float, float]] = []
    for label, px, py, colour in points:
        if not px or not py or px.get("value") is None or py.get("value") is None:
            continue
        x, y = sx(px["value"]), sy(py["value"])
        # Labels near the right edge go to the left of their point; a label that would overlap an earlier one
        # moves up, so coincident points (a recipe that changed nothing sits on the base) stay readable.
        anchor, lx = ("end", x - 8) if px["value"] > 0.7 else ("start", x + 8)
        ly = y - 8
        while any(abs(ly - py_) < 14 and abs(lx - px_) < 120 for px_, py_ in placed):
            ly -= 14
        placed.append((lx, ly))
        if px.get("ci95"):
            parts.append(f'<line x1="{sx(px["ci95"][0]):.1f}" y1="{y:.1f}" x2="{sx(px["ci95"][1]):.1f}" '
                         f'y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>')
        if py.get("ci95"):
            parts.append(f'<line x1="{x:.1f}" y1="{sy(py["ci95"][0]):.1f}" x2="{x:.1f}" '
                         f'y2="{sy(py["ci95"][1]):.1f}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>'
                     f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="{colour}">{escape(label)} '
                     f'({px["value"]:.2f}, {py["value"]:.2f})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _max_bound(verdict_kpis: list[dict[str, Any]], name: str) -> float | None:
    k = next((k for k in verdict_kpis if k["name"] == name), None)
    maxes = [b["threshold"] for b in (k or {}).get("bounds", []) if b.get("rule") == "max" and b.get("threshold") is not None]
    return min(maxes) if maxes else None


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    runs = load_runs(run_dirs)
    comp = comparison(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kpis = runs[0]["verdict"]["kpis"]
    paths = {"json": out / "compare.json", "markdown": out / "compare.md", "frontier": out / "frontier.svg",
             "frontier_capability": out / "frontier_capability.svg"}
    write_json(paths["json"], comp)
    write_text_atomic(paths["markdown"], comparison_markdown(comp))
    try:
        svg = frontier_svg(comp, x_max=_max_bound(kpis, "harmful_compliance"), y_max=_max_bound(kpis, "over_refusal"))
        write_text_atomic(paths["frontier"], svg)
    except CompareError:
        paths.pop("frontier")
    try:  # safety against capability: harmful compliance vs the capability mean (when the policy has both)
        svg = frontier_svg(comp, x_max=_max_bound(kpis, "harmful_compliance"), **CAPABILITY_FRONTIER)
        write_text_atomic(paths["frontier_capability"], svg)
    except CompareError:
        paths.pop("frontier_capability")
    return paths
