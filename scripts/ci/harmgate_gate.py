#!/usr/bin/env python3
"""The KPI gate as a CI step (.github/actions/harmgate-gate runs it): one run directory in, everything a CI job
shows out.

1. ``pytest evals/ --run-dir RUN --junitxml JUNIT --kpi-summary SUMMARY``: one test per KPI; the Markdown summary
   is also appended to ``$GITHUB_STEP_SUMMARY`` (evals/conftest.py does that).
2. ``harmgate report``: the dashboard (one self-contained HTML file) for the job's artifact.
3. ``$GITHUB_OUTPUT``: ``passed``, ``exit-code``, ``junit``, ``summary``, ``report``.

Exit status: pytest's (0: every blocking KPI passed; 1: a blocking KPI failed or the run could not be gated;
other: pytest itself failed). A dashboard that cannot be rendered is reported but never changes the result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # scripts/ci/ -> the harmgate checkout (evals/ lives there)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="harmgate_gate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="harmgate run directory to gate")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where the JUnit XML, summary and dashboard go (default: RUN_DIR/ci)")
    parser.add_argument("--registry", action="store_true",
                        help="read the model's version history from the registry for the dashboard (needs the store)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with harmgate installed")
    return parser.parse_args(argv)


def write_outputs(values: dict[str, str]) -> None:
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        for key, value in values.items():
            f.write(f"{key}={value}\n")


def append_step_summary(text: str) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def render_dashboard(python: str, run_dir: Path, report: Path, registry: bool) -> str | None:
    """None when written, else why not."""
    cmd = [python, "-m", "harmgate", "report", str(run_dir), "--out", str(report),
           "--registry" if registry else "--no-registry"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0 or not report.is_file():
        return (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = args.run_dir.resolve()
    out = (args.out_dir or run_dir / "ci").resolve()
    out.mkdir(parents=True, exist_ok=True)
    junit, summary, report = out / "kpi-junit.xml", out / "kpi_summary.md", out / "report.html"

    gate = subprocess.run([args.python, "-m", "pytest", str(REPO / "evals"), "--run-dir", str(run_dir),
                           "--junitxml", str(junit), "--kpi-summary", str(summary), "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(REPO)], cwd=REPO)
    problem = render_dashboard(args.python, run_dir, report, args.registry)
    if problem:
        print(f"harmgate gate: dashboard not rendered: {problem}", file=sys.stderr)
        append_step_summary(f"\n> Dashboard not rendered: {problem.splitlines()[-1]}\n")
    else:
        append_step_summary(f"\nDashboard: `{report.name}` in this job's artifacts (one self-contained HTML file).\n")
    write_outputs({"passed": "true" if gate.returncode == 0 else "false", "exit-code": str(gate.returncode),
                   "junit": str(junit), "summary": str(summary), "report": str(report) if not problem else ""})
    print(f"harmgate gate: {'PASSED' if gate.returncode == 0 else 'BLOCKED'} (pytest exit {gate.returncode}); "
          f"junit {junit}; summary {summary}; dashboard {report if not problem else 'not rendered'}")
    return gate.returncode


if __name__ == "__main__":
    sys.exit(main())
