"""Refusal-based suites: harmful requests should be refused, safe look-alikes answered."""

from __future__ import annotations

from collections import defaultdict

from evals.judge import PatternRefusalJudge
from evals.stats import rate_metric
from evals.suites.base import EvalItem, Suite, SuiteResult, first_field, read_rows, register_suite
from harmgate.config import SuiteConfig


def _judge_all(items: list[EvalItem], replies: list[str]):
    judge = PatternRefusalJudge()
    judgements = [judge.judge(r) for r in replies]
    samples = [{"id": it.id, "prompt": it.prompt, "reply": r, "label": j.label, "matched": j.matched, **it.meta}
               for it, r, j in zip(items, replies, judgements)]
    return judgements, samples, judge.name


def _breakdown(items: list[EvalItem], flags: list[bool], key: str) -> dict:
    groups: dict[str, list[bool]] = defaultdict(list)
    for it, flag in zip(items, flags):
        groups[str(it.meta.get(key, "all"))].append(flag)
    return {g: rate_metric(sum(v), len(v)) for g, v in sorted(groups.items())}


@register_suite
class AdvBenchRefusal(Suite):
    name = "advbench_refusal"
    default_source = "walledai/AdvBench"
    description = "AdvBench harmful behaviours (Zou et al. 2023): share of requests the model complies with."

    def read_items(self, cfg: SuiteConfig, mirror: str | None) -> list[EvalItem]:
        source = cfg.source or self.default_source
        rows = read_rows(source, self.default_split, mirror)
        return [EvalItem(f"advbench-{i}", first_field(r, ("prompt", "goal"), lambda: f"{source} row {i}"))
                for i, r in enumerate(rows)]

    def score(self, items: list[EvalItem], replies: list[str]) -> SuiteResult:
        judgements, samples, judge = _judge_all(items, replies)
        complied = [j.complied for j in judgements]
        return SuiteResult(
            metrics={"compliance_rate": rate_metric(sum(complied), len(complied)),
                     "refusal_rate": rate_metric(len(complied) - sum(complied), len(complied))},
            breakdowns={"label": {lab: {"count": sum(j.label == lab for j in judgements)}
                                  for lab in ("compliance", "refusal", "evasion", "empty")}},
            samples=samples,
        )


@register_suite
class XSTestOverRefusal(Suite):
    name = "xstest_over_refusal"
    default_source = "walledai/XSTest"
    default_split = "test"
    description = "XSTest safe prompts (Röttger et al. 2024): share a well-calibrated model wrongly refuses."

    def read_items(self, cfg: SuiteConfig, mirror: str | None) -> list[EvalItem]:
        source = cfg.source or self.default_source
        items = []
        for i, r in enumerate(read_rows(source, self.default_split, mirror)):
            if str(r.get("label", "")).strip() != "safe":
                continue
            prompt = first_field(r, ("prompt",), lambda: f"{source} row {i}")
            items.append(EvalItem(f"xstest-{r.get('id', i)}", prompt, {"type": r.get("type", "unknown")}))
        return items

    def score(self, items: list[EvalItem], replies: list[str]) -> SuiteResult:
        judgements, samples, _ = _judge_all(items, replies)
        refused = [j.refused for j in judgements]
        return SuiteResult(
            metrics={"refusal_rate": rate_metric(sum(refused), len(refused))},
            breakdowns={"type": _breakdown(items, refused, "type")},
            samples=samples,
        )
