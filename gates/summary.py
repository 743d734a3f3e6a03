"""The verdict as Markdown: for CI job summaries and the terminal."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(ci: Any) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def kpi_markdown(verdict: dict[str, Any], run_dir: str | None = None) -> str:
    status = "PASSED" if verdict["passed"] else "BLOCKED"
    lines = [f"## harmgate KPI gate: {status}", ""]
    if run_dir:
        lines += [f"Run: `{run_dir}`", ""]
    lines += ["| KPI | metric | base | tuned (95% CI) | delta | bounds | severity | result |",
              "|---|---|---|---|---|---|---|---|"]
    for k in verdict["kpis"]:
        bounds = ", ".join(b["bound"] for b in k["bounds"])
        result = "pass" if k["passed"] else ("**FAIL**" if k["severity"] == "block" else "warn")
        lines.append(f"| {k['name']} | `{k['metric']}` | {_fmt(k['base'])} | {_fmt(k['tuned'])}{_ci(k['tuned_ci95'])}"
                     f" | {_fmt(k['delta'])} | {bounds} | {k['severity']} | {result} |")
    failing = [k for k in verdict["kpis"] if not k["passed"]]
    if failing:
        lines += ["", "Failures:"] + [f"- **{k['name']}**: {k['reason']}" for k in failing]
    return "\n".join(lines) + "\n"
