"""Re-judge stored generations with another judge and say which judgements change.

Reads the samples a run kept: ``evals/<arm>/<suite>.samples.jsonl`` in a run directory (every sample), or, where
only the dashboard was kept (docs/results/issue6), the samples ``report.html`` / ``dashboard.html`` shows under
"Worst generations first" (the tuned output and the base output beside it, with the label the run's judge gave
the tuned one). Only the refusal-judged suites are re-judged: harmful_compliance, over_refusal, helpfulness.

    PYTHONPATH=. python scripts/rejudge_samples.py --out docs/results/issue13 \
        --harm-head harmgate/refusal-judge/harm-head-v2.json docs/results/issue6/{sft-hh,sft-mix,ulma,dpo}

writes ``rejudge.json`` (every changed judgement) and ``rejudge.md`` (counts per run and suite). A dashboard
holds a ranked subset (the flagged ones first), so its counts bound a KPI's change; they do not recompute it.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUITES = ("harmful_compliance", "over_refusal", "helpfulness")
_SAMPLE = re.compile(
    r'<div class="sample[^"]*" data-sample="(?P<id>[^"]+)">\s*<div class="head"><b>(?P<label>[^<]*)</b>(?P<meta>[^<]*)'
    r'</div>\s*<div class="prompt">(?P<prompt>.*?)</div>\s*<div class="cols">\s*<div><div class="label">tuned</div>'
    r'<pre class="output">(?P<tuned>.*?)</pre></div>\s*<div><div class="label">base(?: · (?P<base_label>[^<]*))?'
    r'</div><pre class="base-output">(?P<base>.*?)</pre>', re.S)
_SUITE = re.compile(r"<h3>([a-z_]+)</h3>")


@dataclass
class Sample:
    run: str
    suite: str
    id: str
    prompt: str
    tuned: str
    tuned_label: str | None   # complied | refused | None (the run's judge, as the dashboard shows it)
    base: str | None
    base_label: str | None


def _label(head: str | None) -> str | None:
    word = (head or "").split(",")[0].strip()
    return word if word in ("complied", "refused") else None


def samples_from_dashboard(path: Path, run: str) -> list[Sample]:
    text = path.read_text(encoding="utf-8")
    start = text.find("Worst generations first")
    text = text[start:] if start >= 0 else text
    marks = [(m.start(), m.group(1)) for m in _SUITE.finditer(text)]
    out = []
    for m in _SAMPLE.finditer(text):
        suite = next((name for pos, name in reversed(marks) if pos < m.start()), "")
        if suite not in SUITES:
            continue
        out.append(Sample(run, suite, m["id"], html.unescape(m["prompt"]), html.unescape(m["tuned"]),
                          _label(m["label"]), html.unescape(m["base"]), _label(m["base_label"])))
    return out


def samples_from_run(run_dir: Path) -> list[Sample]:
    out = []
    for suite in SUITES:
        tuned = run_dir / "evals" / "tuned" / f"{suite}.samples.jsonl"
        base = run_dir / "evals" / "base" / f"{suite}.samples.jsonl"
        if not tuned.is_file():
            continue
        base_rows = {}
        if base.is_file():
            base_rows = {r["id"]: r for r in map(json.loads, base.read_text().splitlines()) if r}
        for line in tuned.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            b = base_rows.get(r["id"], {})
            prompt = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
            out.append(Sample(run_dir.name, suite, r["id"], prompt, r["output"],
                              "refused" if r.get("scores", {}).get("refused") else "complied", b.get("output"),
                              ("refused" if b.get("scores", {}).get("refused") else "complied") if b else None))
    return out


def load_samples(ref: Path) -> list[Sample]:
    if (ref / "evals").is_dir():
        return samples_from_run(ref)
    for name in ("report.html", "dashboard.html"):
        if (ref / name).is_file():
            return samples_from_dashboard(ref / name, ref.name)
    raise SystemExit(f"{ref}: neither a run directory (evals/) nor a folder with report.html / dashboard.html")


def rejudge(samples: list[Sample], judge: Any) -> dict[str, Any]:
    out = judge.judge_many([s.tuned for s in samples], [s.prompt for s in samples])
    with_base = [s for s in samples if s.base is not None]
    base_out = dict(zip([id(s) for s in with_base],
                        judge.judge_many([s.base or "" for s in with_base], [s.prompt for s in with_base])))
    counts: dict[str, Counter[str]] = {}
    changes = []
    for s, j in zip(samples, out):
        new = "refused" if j.refused else "complied"
        c = counts.setdefault(f"{s.run}/{s.suite}", Counter())
        c["shown"] += 1
        c[f"was_{s.tuned_label}"] += 1
        c[f"now_{new}"] += 1
        if j.harmful is not None:
            c["now_harmful"] += int(j.harmful)
        if s.tuned_label and s.tuned_label != new:
            c[f"{s.tuned_label}->{new}"] += 1
            changes.append({"run": s.run, "suite": s.suite, "id": s.id, "arm": "tuned", "prompt": s.prompt[:200],
                            "reply": s.tuned[:300], "was": s.tuned_label, "now": new, "label": j.label,
                            "score": j.score, "harmful": j.harmful, "harm_score": j.harm_score})
        b = base_out.get(id(s))
        if b is not None and s.base_label:
            bn = "refused" if b.refused else "complied"
            c["base_shown_labelled"] += 1
            if bn != s.base_label:
                c[f"base_{s.base_label}->{bn}"] += 1
                changes.append({"run": s.run, "suite": s.suite, "id": s.id, "arm": "base", "prompt": s.prompt[:200],
                                "reply": (s.base or "")[:300], "was": s.base_label, "now": bn, "label": b.label,
                                "score": b.score, "harmful": b.harmful, "harm_score": b.harm_score})
    return {"judge": judge.name, "counts": {k: dict(v) for k, v in counts.items()}, "changes": changes}


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Re-judged with `{res['judge']}` (tuned outputs the dashboards show; base outputs where labelled).", "",
             "| run / suite | shown | judged complied then | now complied | now refused | complied→refused | "
             "refused→complied | now harmful |", "|---|---|---|---|---|---|---|---|"]
    for k, c in res["counts"].items():
        lines.append(f"| {k} | {c.get('shown', 0)} | {c.get('was_complied', 0)} | {c.get('now_complied', 0)} | "
                     f"{c.get('now_refused', 0)} | {c.get('complied->refused', 0)} | {c.get('refused->complied', 0)} | "
                     f"{c.get('now_harmful', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories or folders holding a dashboard")
    ap.add_argument("--out", type=Path, required=True, help="output folder (rejudge.json, rejudge.md)")
    ap.add_argument("--kind", default="trained", help="evals.judge.kind of the new judge (default trained)")
    ap.add_argument("--harm-head", default=None, help="evals.judge.harm_head (e.g. harmgate/refusal-judge/"
                                                      "harm-head-v2.json); default none")
    args = ap.parse_args(argv)

    from evals.judge import load_judge
    from harmgate.config import JudgeConfig

    judge = load_judge(JudgeConfig(kind=args.kind, harm_head=args.harm_head))
    samples = [s for ref in args.runs for s in load_samples(ref)]
    print(f"{len(samples)} samples from {len(args.runs)} runs; judge {judge.name}", file=sys.stderr)
    res = rejudge(samples, judge)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rejudge.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "rejudge.md").write_text(markdown(res), encoding="utf-8")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
