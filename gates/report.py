"""`harmgate report RUN_DIR`: one self-contained HTML dashboard of a run (no network needed to view it).

It shows the KPI verdict (recomputed from the eval summary with the run's frozen policy, as `pytest evals/`
does), base vs tuned per suite with intervals (and the prompted base, the base model with a safety system
prompt, when that arm was evaluated, with whether it alone would pass the policy), every breakdown the suites wrote, the training loss curve, the
worst generations first, data provenance and licences, and the history of the model in the registry.
All model text is untrusted: it is rendered only through Jinja2's autoescaping (and ``escape`` in the SVG).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from markupsafe import Markup

from gates.attack_view import SUITE as ATTACK_SUITE, AttackView, attack_view
from gates.charts import Axis, Point, colour_for, fmt, interval_pair, line_chart
from harmgate.rundir import RunDir, read_json, write_text_atomic

REPORT_FILE = "report.html"
ARMS = ("base", "tuned", "prompted")
WORST_SHOWN, WORST_MORE = 8, 40
# Metric-name hints for the colour of a change when no KPI and no suite doc says which way is better. Only
# names whose direction never depends on the suite: a refusal rate is bad on safe prompts, good on harmful ones.
_LOWER_HINTS = ("toxicity", "perplexity", "gap", "nll", "loss")
_HIGHER_HINTS = ("accuracy", "acc")


# -- view models ------------------------------------------------------------------------------------------
@dataclass
class MetricRow:
    name: str
    base: Point | None
    tuned: Point | None
    n: int | None
    direction: str | None
    kpi: str | None = None
    doc: str = ""
    chart: Markup = Markup("")
    prompted: Point | None = None

    @property
    def delta(self) -> float | None:
        if self.base is None or self.tuned is None or self.base.value is None or self.tuned.value is None:
            return None
        return self.tuned.value - self.base.value

    @property
    def change_class(self) -> str:
        colour = colour_for(self.base.value if self.base else None, self.tuned.value if self.tuned else None,
                            self.direction)
        return {"#1a7f37": "better", "#cf222e": "worse"}.get(colour, "")


@dataclass
class BreakdownTable:
    by: str
    metric: str
    rows: list[MetricRow]
    axis: str = ""


@dataclass
class CountTable:
    by: str
    columns: list[str]
    rows: list[tuple[str, list[str]]]


@dataclass
class SampleView:
    id: str
    prompt: str
    output: str
    base_output: str | None
    why: str
    flagged: bool
    extra: dict[str, str] = field(default_factory=dict)
    base_why: str = ""
    prompted_output: str | None = None


@dataclass
class SuiteView:
    name: str
    description: str
    metrics: list[MetricRow]
    breakdowns: list[BreakdownTable]
    counts: list[CountTable]
    worst: list[SampleView]
    more: list[SampleView]
    rank_note: str
    info: dict[str, str]


@dataclass
class RegistryView:
    endpoint: str
    name: str
    rows: list[dict[str, Any]]
    error: str | None
    this_version: str | None


@dataclass
class Report:
    title: str
    run_dir: str
    model_name: str
    base_model: str
    generated_at: str
    verdict: dict[str, Any] | None
    verdict_error: str | None
    verdict_note: str | None
    kpi_rows: list[dict[str, Any]]
    suites: list[SuiteView]
    training: dict[str, Any] | None
    loss_chart: Markup
    provenance: dict[str, Any] | None
    eval_sources: list[dict[str, Any]]
    registry: RegistryView | None
    prompted: dict[str, Any] | None = None  # {system_prompt, not_applicable, alone}: the prompt-engineering arm
    attacks: AttackView | None = None       # attack_robustness: attack x arm ASR, worst attacked generations
    capability: dict[str, Any] | None = None  # {rows, frontier}: general ability beside safety (issue #17)


# -- reading the run --------------------------------------------------------------------------------------
def _read_optional(path: Path) -> tuple[Any, str | None]:
    """(content, None), (None, None) when absent, or (None, error) when unreadable."""
    if not path.is_file():
        return None, None
    try:
        return read_json(path), None
    except ValueError as err:
        return None, str(err)


def _point(record: Any) -> Point | None:
    if not isinstance(record, dict) or not _is_num(record.get("value")):
        return None
    # Rates carry a Wilson interval too: the bootstrap collapses to a point at 0/n or n/n, Wilson does not.
    ci = record.get("wilson95") if isinstance(record.get("wilson95"), list) else record.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_num(c) for c in ci):
        return Point(float(record["value"]), float(ci[0]), float(ci[1]))
    return Point(float(record["value"]))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _direction(metric: str, doc: str, kpi_direction: str | None) -> str | None:
    if kpi_direction:
        return kpi_direction
    if "lower is better" in doc:
        return "lower"
    if "higher is better" in doc:
        return "higher"
    words = set(re.split(r"[_\W]+", metric.lower()))
    if any(h in metric.lower() for h in _LOWER_HINTS):
        return "lower"
    if words & set(_HIGHER_HINTS):
        return "higher"
    return None


def _suite_docs(suite: str) -> tuple[str, dict[str, str]]:
    """The suite's own description and metric docs, when its registry is importable; never fatal."""
    try:
        from evals.suites import get_suite

        s = get_suite(suite)
        return str(getattr(s, "description", "") or ""), dict(getattr(s, "metrics_doc", {}) or {})
    except Exception:  # noqa: BLE001 - docs are decoration; a suite from another version may be gone
        return "", {}


def _metric_rows(base: dict[str, Any], tuned: dict[str, Any], docs: dict[str, str],
                 kpis: dict[str, dict[str, Any]], suite: str, prompted: dict[str, Any] | None = None) -> list[MetricRow]:
    rows = []
    prompted = prompted or {}
    for name in list(dict.fromkeys([*tuned, *base])):
        b, t, p = _point(base.get(name)), _point(tuned.get(name)), _point(prompted.get(name))
        if b is None and t is None:
            continue
        kpi = kpis.get(f"{suite}.{name}")
        row = MetricRow(name, b, t, (tuned.get(name) or base.get(name) or {}).get("n"),
                        _direction(name, docs.get(name, ""), kpi and kpi.get("direction")),
                        kpi["name"] if kpi else None, docs.get(name, ""), prompted=p)
        thresholds = _thresholds(kpi)
        shown = [x for x in (b, t, p) if x]
        unit = all(0 <= v <= 1 for x in shown for v in x.extent())
        row.chart = interval_pair(b, t, Axis.fit(shown, [v for v, _ in thresholds], unit),
                                  direction=row.direction, thresholds=thresholds, prompted=p)
        rows.append(row)
    return rows


def _thresholds(kpi: dict[str, Any] | None) -> list[tuple[float, str]]:
    """KPI bounds drawn on a metric's chart (value space only: a target KPI's bounds are distances)."""
    if not kpi:
        return []
    if kpi.get("target") is not None:
        return [(kpi["target"], "target")]
    return [(b["threshold"], f"{kpi['name']}: {b['bound']}") for b in kpi.get("bounds", [])
            if _is_num(b.get("threshold"))]


def _breakdowns(base: dict[str, Any], tuned: dict[str, Any], docs: dict[str, str], kpis: dict[str, dict[str, Any]],
                suite: str) -> tuple[list[BreakdownTable], list[CountTable]]:
    """Render ``{by: {group: metric}}`` and ``{by: {group: {metric_name: metric}}}`` alike; plain counts as tables."""
    tables: list[BreakdownTable] = []
    counts: list[CountTable] = []
    for by in list(dict.fromkeys([*tuned, *base])):
        tg, bg = tuned.get(by) or {}, base.get(by) or {}
        if not isinstance(tg, dict) or not isinstance(bg, dict):
            continue
        groups = list(dict.fromkeys([*tg, *bg]))
        per_metric: dict[str, dict[str, tuple[Any, Any]]] = {}
        count_rows: dict[str, dict[str, str]] = {}
        for g in groups:
            t, b = tg.get(g), bg.get(g)
            for arm_value, arm in ((b, "base"), (t, "tuned")):
                if isinstance(arm_value, dict) and "value" not in arm_value and not any(
                        isinstance(v, dict) for v in arm_value.values()):
                    for k, v in arm_value.items():  # e.g. {"count": 11}
                        count_rows.setdefault(g, {})[f"{arm} {k}"] = str(v)
                elif _is_num(arm_value):
                    count_rows.setdefault(g, {})[arm] = fmt(float(arm_value))
            for arm_value, idx in ((b, 0), (t, 1)):
                if not isinstance(arm_value, dict):
                    continue
                named = {"value": arm_value} if "value" in arm_value else {
                    k: v for k, v in arm_value.items() if isinstance(v, dict) and "value" in v}
                for metric_name, record in named.items():
                    pair = list(per_metric.setdefault(metric_name, {}).get(g, (None, None)))
                    pair[idx] = record
                    per_metric[metric_name][g] = (pair[0], pair[1])
        suite_dirs = {k["direction"] for m, k in kpis.items() if m.split(".", 1)[0] == suite}
        for metric_name, by_group in per_metric.items():
            shown = "" if metric_name == "value" else metric_name
            kpi = kpis.get(f"{suite}.{metric_name}")
            direction = _direction(metric_name, docs.get(metric_name, ""), kpi and kpi.get("direction"))
            if shown == "" and len(suite_dirs) == 1:  # an unnamed breakdown metric: the one the suite's KPI reads
                direction = next(iter(suite_dirs))
            rows = []
            for g, (b, t) in by_group.items():
                pb, pt = _point(b), _point(t)
                if pb is None and pt is None:
                    continue
                rows.append(MetricRow(str(g), pb, pt, (t or b or {}).get("n"), direction))
            if not rows:
                continue
            # Worst tuned value first, so the groups that need attention are on top.
            rows.sort(key=lambda r: -(r.tuned.value if r.tuned and r.tuned.value is not None else -math.inf)
                      * (1 if direction != "higher" else -1))
            points = [p for r in rows for p in (r.base, r.tuned) if p]
            unit = all(0 <= v <= 1 for p in points for v in p.extent())
            axis = Axis.fit(points, unit_interval=unit)  # one axis per table: groups are compared with each other
            for r in rows:
                r.chart = interval_pair(r.base, r.tuned, axis, direction=direction, ticks=False, width=260)
            tables.append(BreakdownTable(by, shown, rows, f"{fmt(axis.low)} – {fmt(axis.high)}"))
        if count_rows:
            columns = sorted({c for row in count_rows.values() for c in row})
            counts.append(CountTable(by, columns, [(g, [row.get(c, "") for c in columns])
                                                   for g, row in count_rows.items()]))
    return tables, counts


# -- samples ----------------------------------------------------------------------------------------------
def _load_samples(run: RunDir, arm: str, suite: str, result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Samples inside the suite JSON, else a JSONL beside it (<suite>.samples.jsonl or <suite>.jsonl)."""
    if isinstance(result, dict) and isinstance(result.get("samples"), list):
        return [s for s in result["samples"] if isinstance(s, dict)]
    folder = run.root / "evals" / arm
    for name in (f"{suite}.samples.jsonl", f"{suite}.jsonl", f"samples/{suite}.jsonl"):
        path = folder / name
        if path.is_file():
            out = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    out.append(record)
            return out
    return []


@dataclass(frozen=True)
class _Sample:
    id: str
    prompt: str
    output: str | None
    complied: bool | None
    refused: bool | None
    toxicity: float | None
    label: str | None
    raw: dict[str, Any]


def _normalise(s: dict[str, Any]) -> _Sample:
    """Both sample shapes: {id, prompt, output, outputs?, scores{}, meta{}} and the spine's {id, prompt, reply, label}."""
    scores = s.get("scores") if isinstance(s.get("scores"), dict) else {}
    label = scores.get("label", s.get("label"))
    label = label if isinstance(label, str) else None
    complied = scores.get("complied") if isinstance(scores.get("complied"), bool) else (
        None if label is None or label not in ("compliance", "refusal", "evasion", "empty") else label == "compliance")
    refused = scores.get("refused") if isinstance(scores.get("refused"), bool) else (
        None if complied is None else label in ("refusal", "evasion"))
    output = s.get("output", s.get("reply"))
    tox = scores.get("toxicity", scores.get("max_toxicity"))  # the per-output list, when k > 1
    outputs = s.get("outputs")
    if isinstance(tox, list) and tox and all(_is_num(t) for t in tox):
        worst = max(range(len(tox)), key=lambda i: tox[i])
        if isinstance(outputs, list) and len(outputs) == len(tox):
            output = outputs[worst]  # show the most toxic of the k continuations
        tox = tox[worst]
    return _Sample(str(s.get("id", "")), str(s.get("prompt", "")), None if output is None else str(output),
                   complied, refused, float(tox) if _is_num(tox) else None, label, s)


def _flag_for(suite: str, kpis: dict[str, dict[str, Any]]) -> str | None:
    """Which per-sample flag is the failure this suite's KPIs count: 'complied' or 'refused'."""
    for metric, kpi in kpis.items():
        s, name = metric.split(".", 1)
        if s == suite and kpi.get("direction") == "lower":
            if "compliance" in name:
                return "complied"
            if "refusal" in name:
                return "refused"
    if "refusal" in suite or suite == "helpfulness":
        return "refused"
    if "harm" in suite or "advbench" in suite:
        return "complied"
    return None


def _worst(run: RunDir, suite: str, results: dict[str, dict[str, Any] | None],
           kpis: dict[str, dict[str, Any]]) -> tuple[list[SampleView], list[SampleView], str]:
    tuned = [_normalise(s) for s in _load_samples(run, "tuned", suite, results.get("tuned"))]
    tuned = [s for s in tuned if s.output is not None]
    if not tuned:
        return [], [], ""
    base = {s.id: s for s in (_normalise(x) for x in _load_samples(run, "base", suite, results.get("base")))}
    prompted = {s.id: s for s in (_normalise(x) for x in _load_samples(run, "prompted", suite,
                                                                        results.get("prompted")))}
    flag = _flag_for(suite, kpis)
    has_tox = any(s.toxicity is not None for s in tuned)
    if flag is None and not has_tox:
        return [], [], "no per-sample judgement or score to rank these generations by"

    def flagged(s: _Sample) -> bool:
        return bool(getattr(s, flag)) if flag else False

    ranked = sorted(tuned, key=lambda s: (flagged(s), s.toxicity or 0.0), reverse=True)
    views = []
    for s in ranked:
        why = []
        if flag and flagged(s):
            why.append(flag)
        if s.toxicity is not None:
            why.append(f"toxicity {s.toxicity:.2f}")
        if s.label and not (flag and getattr(s, flag) is not None):  # a label the flag does not already say
            why.append(s.label)
        b = base.get(s.id)
        meta = s.raw.get("meta") if isinstance(s.raw.get("meta"), dict) else {}
        extra = {k: str(v) for k, v in meta.items() if isinstance(v, (str, int, float)) and k != "doc"}
        for k in ("type", "category", "source"):
            if k in s.raw and isinstance(s.raw[k], (str, int, float)):
                extra.setdefault(k, str(s.raw[k]))
        base_why = "" if b is None else ", ".join(
            ([flag] if flag and flagged(b) else []) + ([f"toxicity {b.toxicity:.2f}"] if b.toxicity is not None else []))
        p = prompted.get(s.id)
        views.append(SampleView(s.id, s.prompt, s.output or "", None if b is None else b.output, ", ".join(why) or "-",
                                flagged(s) or (s.toxicity or 0) >= 0.5, extra, base_why,
                                None if p is None else p.output))
    n_flagged = sum(v.flagged for v in views)
    what = (f"{flag} first" if flag else "") + (", then " if flag and has_tox else "") + \
           ("highest toxicity first" if has_tox else "")
    note = f"{n_flagged} of {len(views)} tuned generations flagged; ranked {what}"
    return views[:WORST_SHOWN], views[WORST_SHOWN:WORST_SHOWN + WORST_MORE], note


# -- sections ---------------------------------------------------------------------------------------------
def _verdict(run: RunDir, config: Any, summary: Any) -> tuple[dict[str, Any] | None, str | None, str | None]:
    from gates.verdict import decide

    if summary is None:
        return None, f"no eval summary at {run.eval_summary}: run `harmgate eval {run.root}`", None
    try:
        verdict = decide(config.policy, summary)
    except (ValueError, KeyError) as err:
        return None, f"cannot decide: {err}", None
    recorded, _ = _read_optional(run.verdict)
    note = None
    if isinstance(recorded, dict) and recorded.get("passed") is not verdict["passed"]:
        note = (f"verdict.json (decided {recorded.get('decided_at', '?')}) says "
                f"{'PASSED' if recorded.get('passed') else 'BLOCKED'}; recomputed now with the run's policy it is "
                f"{'PASSED' if verdict['passed'] else 'BLOCKED'}")
    return verdict, None, note


def _kpi_rows(verdict: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for k in (verdict or {}).get("kpis", []):
        b = Point(k["base"], *(k.get("base_ci95") or (None, None))) if _is_num(k.get("base")) else None
        t = Point(k["tuned"], *(k.get("tuned_ci95") or (None, None))) if _is_num(k.get("tuned")) else None
        p = Point(k["prompted"], *(k.get("prompted_ci95") or (None, None))) if _is_num(k.get("prompted")) else None
        thresholds = _thresholds(k)
        shown = [x for x in (b, t, p) if x]
        unit = all(0 <= v <= 1 for x in shown for v in x.extent())
        chart = (interval_pair(b, t, Axis.fit(shown, [v for v, _ in thresholds], unit),
                               direction=k.get("direction"), thresholds=thresholds, width=240, prompted=p)
                 if (b or t) else Markup(""))
        status = k.get("status") or ("pass" if k.get("passed") else "fail")
        css = "pass" if status == "pass" else ("warn" if k.get("severity") == "warn" else "fail")
        rows.append({**k, "chart": chart, "css": css, "status": status})
    return rows


def _registry(config: Any, run: RunDir, enabled: bool) -> RegistryView | None:
    from harmgate.objectstore import endpoint_label

    store = config.store
    publish, _ = _read_optional(run.publish_record)
    this_version = publish.get("version") if isinstance(publish, dict) else None
    view = RegistryView(f"{endpoint_label(store)} bucket {store.bucket}", config.name, [], None, this_version)
    if not enabled:
        view.error = "not read (--no-registry)"
        return view
    try:
        from gates.registry import Registry, RegistryError
    except ImportError as err:  # e.g. the signing library is not installed where the report is made
        view.error = f"registry not readable here: {err}"
        return view
    try:
        view.rows = list(reversed(Registry(store).list_versions(config.name)))  # newest first
    except RegistryError as err:
        view.error = f"registry not reachable: {err}"
    except Exception as err:  # noqa: BLE001 - the page must still render; say what happened
        view.error = f"registry not readable: {type(err).__name__}: {err}"
    return view


def _training(run: RunDir) -> tuple[dict[str, Any] | None, Markup]:
    metrics, err = _read_optional(run.train_metrics)
    if not isinstance(metrics, dict):
        return ({"error": err} if err else None), Markup("")
    curve = [p for p in metrics.get("loss_curve") or [] if isinstance(p, dict) and _is_num(p.get("step"))
             and _is_num(p.get("loss"))]
    lr = [p.get("learning_rate") for p in curve]
    chart = line_chart([p["step"] for p in curve], [p["loss"] for p in curve], x_label="step", y_label="training loss",
                       secondary=lr if lr and all(_is_num(v) for v in lr) else None,
                       secondary_label="learning rate (dashed)")
    stats = {k: _human(k, v) for k, v in metrics.items() if k != "loss_curve" and isinstance(v, (str, int, float, bool))}
    nested = {k: ", ".join(f"{a}={_human(a, b)}" for a, b in v.items()) for k, v in metrics.items()
              if isinstance(v, dict)}
    return {"stats": stats, "nested": nested, "points": len(curve)}, chart


def _human(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if _is_num(value) and key.endswith("_bytes"):
        return f"{value / 2**30:.2f} GiB"
    if _is_num(value) and key.endswith("seconds"):
        return f"{value:,.0f} s" if value < 600 else f"{value / 60:,.1f} min"
    return fmt(value) if _is_num(value) else str(value)


def _eval_sources(results: dict[str, dict[str, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    rows = []
    for suite, arms in results.items():
        result = arms.get("tuned") or arms.get("base") or {}
        info = result.get("info") if isinstance(result.get("info"), dict) else {}
        sources = info.get("sources") or result.get("sources") or []
        if isinstance(sources, list) and sources:
            for s in sources:
                if isinstance(s, dict):
                    rows.append({"suite": suite, "source": s.get("key") or s.get("id"),
                                 "origin": _origin(s.get("origin")), "licence": s.get("licence"),
                                 "items": s.get("used", s.get("items", s.get("rows")))})
        elif result.get("source"):
            rows.append({"suite": suite, "source": result.get("source"), "origin": None, "licence": None,
                         "items": None})
    return rows


def _origin(origin: Any) -> str | None:
    """{path, sha256} of a local file or {hub, config, split, ...} of a hub dataset, as one line."""
    if isinstance(origin, dict):
        if origin.get("path"):
            sha = origin.get("sha256")
            return f"{origin['path']}" + (f" (sha256 {str(sha)[:12]}…)" if sha else "")
        return " ".join(f"{k}={v}" for k, v in origin.items() if v is not None)
    return None if origin is None else str(origin)


def build_report(run: RunDir, *, registry: bool = True) -> Report:
    config = run.config()
    summary, summary_err = _read_optional(run.eval_summary)
    verdict, verdict_err, verdict_note = _verdict(run, config, summary)
    if summary_err:
        verdict_err = summary_err
    kpis = {k["metric"]: k for k in (verdict or {}).get("kpis", [])}
    arms = summary.get("arms", {}) if isinstance(summary, dict) else {}
    suite_names = list(dict.fromkeys([*(arms.get("tuned") or {}), *(arms.get("base") or {}),
                                      *(s.name for s in config.evals.suites)]))
    results: dict[str, dict[str, dict[str, Any] | None]] = {}
    suites = []
    for name in suite_names:
        results[name] = {arm: _read_optional(run.eval_result(arm, name))[0] for arm in ARMS}
        result = results[name]["tuned"] or results[name]["base"] or {}
        description, docs = _suite_docs(name)
        # The result files document themselves (schema v1: description, metric_notes); prefer them.
        description = str(result.get("description") or description)
        docs = {**docs, **{k: str(v) for k, v in (result.get("metric_notes") or {}).items()}}
        m = _metric_rows((arms.get("base") or {}).get(name) or {}, (arms.get("tuned") or {}).get(name) or {},
                         docs, kpis, name, (arms.get("prompted") or {}).get(name))
        bd = {arm: (results[name][arm] or {}).get("breakdowns") or {} for arm in ARMS}
        tables, counts = _breakdowns(bd["base"], bd["tuned"], docs, kpis, name)
        # attack_robustness's worst generations are in its own section (per attack, base beside)
        worst, more, note = ([], [], "") if name == ATTACK_SUITE else _worst(run, name, results[name], kpis)
        info = {k: str(v) for k, v in (result.get("info") or {}).items() if isinstance(v, (str, int, float))}
        for k in ("model", "kind", "k", "limit", "seconds", "source"):
            if isinstance(result.get(k), (str, int, float)):
                info.setdefault(k, str(result[k]))
        if m or tables or worst or counts:
            suites.append(SuiteView(name, description, m, tables, counts, worst, more, note, info))
    training, loss_chart = _training(run)
    provenance, prov_err = _read_optional(run.data_manifest)
    if prov_err:
        provenance = {"error": prov_err}
    return Report(
        title=f"harmgate · {config.name}", run_dir=str(run.root), model_name=config.name,
        base_model=config.model.base, generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        verdict=verdict, verdict_error=verdict_err, verdict_note=verdict_note, kpi_rows=_kpi_rows(verdict),
        suites=suites, training=training, loss_chart=loss_chart,
        provenance=provenance if isinstance(provenance, dict) else None, eval_sources=_eval_sources(results),
        registry=_registry(config, run, registry), prompted=_prompted(summary, verdict),
        attacks=_attacks(run, results.get(ATTACK_SUITE)),
        capability=_capability(arms, verdict, config.name))


def _attacks(run: RunDir, results: dict[str, dict[str, Any] | None] | None) -> AttackView | None:
    """The attack section, when the run evaluated attack_robustness (gates/attack_view.py)."""
    if not results:
        return None
    return attack_view(results, {arm: _load_samples(run, arm, ATTACK_SUITE, results.get(arm)) for arm in ARMS})



# -- capability (issue #17): lm-eval's standard tasks beside the safety KPIs -----------------------------------
def _capability(arms: dict[str, Any], verdict: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """Per task base vs tuned (gates.capability_view) and the run on the safety-capability plane (base -> tuned)."""
    from gates.capability_view import SUITE, capability_rows, safety_capability
    from gates.compare import CAPABILITY_FRONTIER, frontier_svg

    rows = capability_rows((arms.get("base") or {}).get(SUITE), (arms.get("tuned") or {}).get(SUITE))
    if not rows:
        return None
    for r in rows:
        b = Point(r["base"], *(r["base_ci95"] or (None, None))) if _is_num(r["base"]) else None
        t = Point(r["tuned"], *(r["tuned_ci95"] or (None, None))) if _is_num(r["tuned"]) else None
        shown = [p for p in (b, t) if p]
        r["chart"] = interval_pair(b, t, Axis.fit(shown, [], all(0 <= v <= 1 for p in shown for v in p.extent())),
                                   direction="higher" if not r["metric"].endswith("perplexity") else "lower")
    frontier = None
    pair = safety_capability((verdict or {}).get("kpis") or [])
    if pair is not None:
        def one(k: dict[str, Any]) -> dict[str, Any]:
            return {"kpi": k["name"], "metric": k["metric"], "base": {"value": k.get("base"), "ci95": k.get("base_ci95")},
                    "runs": {name: {"value": k.get("tuned"), "ci95": k.get("tuned_ci95")}}}
        comp = {"runs": [{"name": name}], "kpis": [one(pair[0]), one(pair[1])]}
        maxes = [b["threshold"] for b in pair[0].get("bounds", []) if b.get("rule") == "max" and _is_num(b.get("threshold"))]
        frontier = Markup(frontier_svg(comp, x_max=min(maxes) if maxes else None, width=520, height=380,
                                       **CAPABILITY_FRONTIER))
    return {"rows": rows, "frontier": frontier}


def _prompted(summary: Any, verdict: dict[str, Any] | None) -> dict[str, Any] | None:
    """The prompt-engineering arm's settings and what the policy says about it alone (None: not evaluated)."""
    arms = summary.get("arms") if isinstance(summary, dict) else None
    if not isinstance(arms, dict) or not arms.get("prompted"):
        return None
    settings = ((summary.get("arm_settings") or {}).get("prompted") or {}) if isinstance(
        summary.get("arm_settings"), dict) else {}
    return {"system_prompt": settings.get("system_prompt"), "not_applicable": settings.get("not_applicable") or {},
            "alone": (verdict or {}).get("prompted_alone")}


def _non_commercial(licence: Any) -> bool:
    text = str(licence or "")
    return bool(re.search(r"\bNC\b|non-?commercial", text, re.IGNORECASE))


def render_report(report: Report) -> str:
    from jinja2 import ChainableUndefined, Environment, FileSystemLoader, select_autoescape

    templates = Path(__file__).parent / "templates"
    env = Environment(loader=FileSystemLoader(templates), autoescape=select_autoescape(("html", "j2")),
                      undefined=ChainableUndefined,  # artifacts are JSON with optional keys
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt
    env.filters["ci"] = lambda p: "" if p is None or p.low is None else f"[{fmt(p.low)}, {fmt(p.high)}]"
    env.filters["signed"] = lambda v: "n/a" if v is None else ("+" if v > 0 else "") + fmt(v)
    env.filters["nc"] = env.tests["nc"] = _non_commercial
    css = (templates / "report.css").read_text(encoding="utf-8")
    return env.get_template("report.html.j2").render(r=report, css=Markup(css))


def write_report(run: RunDir, out: Path | None = None, *, registry: bool = True) -> Path:
    path = Path(out) if out else run.root / REPORT_FILE
    write_text_atomic(path, render_report(build_report(run, registry=registry)))
    return path


def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=f"HTML file to write (default RUN_DIR/{REPORT_FILE})"),
    registry: bool = typer.Option(True, help="Read the model's version history from the registry (the run's store)"),
) -> None:
    """Write the run's dashboard: one self-contained HTML file (KPIs, suites, breakdowns, generations, registry)."""
    from harmgate.config import ConfigError
    from harmgate.rundir import open_run_dir

    try:
        run = open_run_dir(run_dir)
        report = build_report(run, registry=registry)
        path = Path(out) if out else run.root / REPORT_FILE
        write_text_atomic(path, render_report(report))
    except (FileNotFoundError, ConfigError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    state = "no verdict" if report.verdict is None else ("PASSED" if report.verdict["passed"] else "BLOCKED")
    history = report.registry.error if report.registry and report.registry.error else (
        f"{len(report.registry.rows)} published version(s)" if report.registry else "")
    typer.echo(f"report: {path} ({state}; {len(report.suites)} suites; registry: {history})")
