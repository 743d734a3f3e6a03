"""The verdict as Markdown: for CI job summaries ($GITHUB_STEP_SUMMARY) and the terminal."""

from __future__ import annotations

from typing import Any

_RESULT = {"pass": "✅ pass", "fail": "❌ **FAIL**", "missing": "❌ **MISSING**"}


def value_text(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def interval_text(ci: Any) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(text: Any) -> str:
    """Table cells: a '|' or a newline in a reason would break the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _result(kpi: dict[str, Any]) -> str:
    status = kpi.get("status") or ("pass" if kpi.get("passed") else "fail")
    if status != "pass" and kpi.get("severity") == "warn":
        return "⚠️ warn" + (" (missing)" if status == "missing" else "")
    return _RESULT.get(status, status)


def _delta(kpi: dict[str, Any]) -> str:
    if kpi.get("delta") is None:
        return "n/a"
    iv = kpi.get("interval")
    shown = f"{kpi['delta']:+.3f}"
    if kpi.get("target") is not None:
        shown += " (value)"
    if iv:
        what = "distance" if kpi.get("target") is not None else ""
        shown += f" [{what + ' ' if what else ''}{iv['low']:+.3f}, {iv['high']:+.3f}]"
    return shown


def _prompted_alone(alone: Any) -> list[str]:
    """One line: would a system prompt alone (the prompted base) have passed this policy?"""
    if not isinstance(alone, dict):
        return []
    if alone.get("passed"):
        return ["", "**System prompt alone:** the prompted base would also pass every blocking KPI."]
    failing = ", ".join(_cell(n) for n in alone.get("blocking_failures") or [])
    return ["", f"**System prompt alone:** the prompted base would be blocked by {failing}."]


def kpi_markdown(verdict: dict[str, Any], run_dir: str | None = None) -> str:
    kpis = verdict.get("kpis", [])
    status = "PASSED" if verdict["passed"] else "BLOCKED"
    blocking, warnings = verdict.get("blocking_failures", []), verdict.get("warnings", [])
    lines = [f"## {'✅' if verdict['passed'] else '❌'} harmgate KPI gate: {status}", ""]
    head = f"{len(kpis)} KPIs: {len(kpis) - len(blocking) - len(warnings)} passed, {len(blocking)} blocking, " \
           f"{len(warnings)} warnings"
    policy = verdict.get("policy") or {}
    if policy.get("name") or policy.get("source"):
        head += f" · policy `{policy.get('name') or policy.get('source')}`"
    if run_dir:
        head += f" · run `{run_dir}`"
    # The prompted base (base model + safety system prompt) gets its own column when it was evaluated.
    prompted = any(k.get("prompted") is not None for k in kpis)
    lines += [head, "",
              "| result | KPI | metric | base | " + ("prompted base | " if prompted else "")
              + "tuned (95% CI) | tuned − base (95% CI) | rules | severity |",
              "|---|---|---|---|---|---|---|---|" + ("---|" if prompted else "")]
    for k in kpis:
        lines.append(f"| {_result(k)} | {_cell(k['name'])} | `{_cell(k['metric'])}` | {value_text(k.get('base'))} | "
                     + (f"{value_text(k.get('prompted'))} | " if prompted else "")
                     + f"{value_text(k.get('tuned'))}{interval_text(k.get('tuned_ci95'))} | {_delta(k)} | "
                     f"{_cell(k.get('bound') or ', '.join(b['bound'] for b in k.get('bounds', [])))} | "
                     f"{k['severity']} |")
    lines += _prompted_alone(verdict.get("prompted_alone"))
    for title, names in (("Blocking failures", blocking), ("Warnings", warnings)):
        failing = [k for k in kpis if k["name"] in names]
        if failing:
            lines += ["", f"**{title}**", ""] + [f"- **{k['name']}**: {k['reason']}" for k in failing]
    with_why = [k for k in kpis if k.get("why")]
    if with_why:
        lines += ["", "<details><summary>Why each KPI exists (from the policy)</summary>", ""]
        lines += [f"- **{k['name']}**: {k['why']}" for k in with_why]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
