"""General ability (the alignment tax): lm-evaluation-harness's standard tasks, base vs tuned, over local files.

Every task here is lm-eval's own definition (prompt template, choices, ``process_results``, metrics), included
by a wrapper YAML that swaps only the data for the documents harmgate sampled (evals/lm_eval_tasks): the rows
come from the hub id for connected users and from the data mirror offline. All tasks run in one
``simple_evaluate`` call on the loaded model (``HFLM(pretrained=model)``), zero-shot.

| task | lm-eval YAML | data (mirror: capability/...) | headline (aggregate) |
|---|---|---|---|
| truthfulqa_mc1, truthfulqa_mc2 | truthfulqa/truthfulqa_mc{1,2}.yaml | truthfulqa (817) | acc = MC1 / MC2 (own KPI) |
| arc_easy, arc_challenge | arc/arc_{easy,challenge}.yaml | ARC test (2,376 / 1,172) | acc_norm |
| piqa | piqa/piqa.yaml | PIQA validation (1,838) | acc_norm |
| winogrande | winogrande/default.yaml | WinoGrande dev (1,267) | acc |
| mmlu | mmlu/default/mmlu_<subject>.yaml x 57 | MMLU test (14,042) | acc (size-weighted over subjects) |
| lambada_openai | lambada/lambada_openai.yaml | LAMBADA OpenAI test (5,153) | acc (also perplexity) |
| sciq | sciq/sciq.yaml | SciQ test (1,000) | acc_norm |
| openbookqa | openbookqa/openbookqa.yaml | OBQA test (500), REBUILT | acc_norm |
| boolq | super_glue/boolq/default.yaml | BoolQ dev (3,270), REBUILT | acc |
| hellaswag | hellaswag/hellaswag.yaml | HellaSwag val (10,042), REBUILT | acc_norm |

Three local files are reconstructions (``RECONSTRUCTED``): their prompts differ from what lm-eval builds from the
hub data in a way measured and pinned by tests/test_capability_faithfulness.py; every result carries the note.

Metrics: ``<task>/<lm-eval metric>`` (value = lm-eval's aggregate; ``stderr`` = lm-eval's standard error;
``ci95`` = harmgate's seeded bootstrap; accuracies also carry ``count`` so the gate compares arms with Newcombe's
interval), ``<task>/normalised`` (chance-corrected headline: (acc - chance) / (1 - chance), chance = 1 / number of
choices per item), and the aggregate ``mean_normalised`` (mean of the normalised headlines over every task but
TruthfulQA; interval: bootstrap resampling each task's items on its own). Breakdowns: MMLU by subject and by
lm-eval's category (stem, humanities, social sciences, other).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evals.lm_eval_tasks import LocalTask, TaskOutput, builtin_task_yaml, run_tasks
from evals.stats import Bootstrap, bootstrap_ci, mean_metric, metric, rate_metric
from evals.suites.base import (EvalItem, Loaded, Suite, SuiteConfigError, SuiteContext, SuiteResult, sample_items,
                               sample_record, register_suite)
from evals.suites.sources import SourceRows, SourceSpec
from harmgate.config import SuiteConfig

DEFAULT_PER_TASK_LIMIT = 50  # CPU default (docs/RESULTS.md "General ability": cost); null in the config: full tasks

TRUTHFULQA = SourceSpec("truthfulqa", hub="truthfulqa/truthful_qa", hub_config="multiple_choice", split="validation",
                        mirror="capability/truthfulqa/truthfulqa_mc_hfformat.jsonl", licence="Apache-2.0",
                        description="TruthfulQA multiple choice (mc1/mc2 targets), 817 questions")
ARC_EASY = SourceSpec("arc_easy", hub="allenai/ai2_arc", hub_config="ARC-Easy", split="test",
                      mirror="capability/arc_easy/arc_easy_test_hfformat.jsonl", licence="CC BY-SA 4.0",
                      description="ARC-Easy test")
ARC_CHALLENGE = SourceSpec("arc_challenge", hub="allenai/ai2_arc", hub_config="ARC-Challenge", split="test",
                           mirror="capability/arc_challenge/arc_challenge_test_hfformat.jsonl",
                           licence="CC BY-SA 4.0", description="ARC-Challenge test")
PIQA = SourceSpec("piqa", hub="baber/piqa", split="validation", mirror="capability/piqa/piqa_validation_hfformat.jsonl",
                  licence="AFL-3.0", description="PIQA validation")
WINOGRANDE = SourceSpec("winogrande", hub="allenai/winogrande", hub_config="winogrande_xl", split="validation",
                        mirror="capability/winogrande/dev.jsonl", licence="CC BY 2.0",
                        description="WinoGrande (xl) dev/validation")
MMLU = SourceSpec("mmlu", hub="cais/mmlu", hub_config="all", split="test",
                  mirror="capability/mmlu/mmlu_test_hfformat.jsonl", licence="MIT",
                  description="MMLU test, 57 subjects")
LAMBADA = SourceSpec("lambada_openai", hub="EleutherAI/lambada_openai", hub_config="default", split="test",
                     mirror="capability/lambada_openai/lambada_test.jsonl", licence="CC BY 4.0",
                     description="LAMBADA (OpenAI's test set)")
SCIQ = SourceSpec("sciq", hub="allenai/sciq", split="test", mirror="capability/sciq/sciq_test.jsonl",
                  licence="CC BY-NC 3.0", description="SciQ test")
OPENBOOKQA = SourceSpec("openbookqa", hub="allenai/openbookqa", hub_config="main", split="test",
                        mirror="capability/openbookqa/openbookqa_test_reconstructed.jsonl", licence="Apache-2.0",
                        description="OpenBookQA main test (offline: rebuilt from llm-foundry's copy)")
BOOLQ = SourceSpec("boolq", hub="aps/super_glue", hub_config="boolq", split="validation",
                   mirror="capability/boolq/boolq_dev_reconstructed.jsonl", licence="CC BY-SA 3.0",
                   description="BoolQ dev (offline: rebuilt, passages without the title prefix)")
HELLASWAG = SourceSpec("hellaswag", hub="Rowan/hellaswag", split="validation",
                       mirror="capability/hellaswag/hellaswag_val_from_klosax.jsonl", licence="MIT",
                       description="HellaSwag validation (offline: a preprocessed copy, contexts already joined)")


def _keep(*fields: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def doc(row: dict[str, Any]) -> dict[str, Any]:
        return {f: row[f] for f in fields}
    return doc


def hellaswag_doc(row: dict[str, Any]) -> dict[str, Any]:
    """A HellaSwag row in the hub schema lm-eval's ``process_docs`` reads. The hub rows pass through; the mirror's
    preprocessed rows (klosax) have the context already joined, so it goes whole into ``ctx_a`` with an empty
    ``ctx_b``: lm-eval's preprocessing then rebuilds the file's own query, except that lm-eval would capitalise
    ctx_b's first letter ("... on a roof. He" where the file has "... on a roof. he")."""
    if "ctx_a" in row:
        return {k: row[k] for k in ("activity_label", "ctx_a", "ctx_b", "endings", "label")}
    return {"activity_label": row["activity_label_pp"], "ctx_a": row["ctx_pp"], "ctx_b": "",
            "endings": list(row["endings_pp"]), "label": str(row["label"])}


def winogrande_doc(row: dict[str, Any]) -> dict[str, Any]:
    doc = {k: row[k] for k in ("sentence", "option1", "option2", "answer")}
    doc["answer"] = str(doc["answer"])
    if doc["answer"] not in ("1", "2") or "_" not in doc["sentence"]:
        raise ValueError(f"WinoGrande row {row.get('qID')}: answer must be '1' or '2' and the sentence needs '_'")
    return doc


@dataclass(frozen=True)
class CapabilityTask:
    name: str                                   # lm-eval's task name
    yaml: str                                   # its YAML in lm-eval's task library ({subject} for MMLU)
    source: SourceSpec
    doc: Callable[[dict[str, Any]], dict[str, Any]]  # row -> document in the schema the stock task reads
    headline: str                               # the metric that enters the aggregate: acc_norm or acc
    metrics: tuple[str, ...] = ("acc",)
    in_aggregate: bool = True
    reconstructed: str | None = None            # how the offline file differs from lm-eval's data
    per_subject: bool = False                   # MMLU: one lm-eval task per subject


RECONSTRUCTED = {
    "hellaswag": "offline file rebuilt from a preprocessed copy: ctx_b is not capitalised as lm-eval does, and "
                 "only the WikiHow tags pp() knew were removed; prompts differ slightly from lm-eval's",
    "boolq": "offline file rebuilt from llm-foundry's copy: passages lack super_glue's 'Title -- ' prefix",
    "openbookqa": "offline file rebuilt from llm-foundry's copy (original ids lost); question stems checked by eye",
}

TASKS: dict[str, CapabilityTask] = {t.name: t for t in (
    CapabilityTask("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", TRUTHFULQA,
                   _keep("question", "mc1_targets", "mc2_targets"), "acc", in_aggregate=False),
    CapabilityTask("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", TRUTHFULQA,
                   _keep("question", "mc1_targets", "mc2_targets"), "acc", in_aggregate=False),
    CapabilityTask("arc_easy", "arc/arc_easy.yaml", ARC_EASY, _keep("id", "question", "choices", "answerKey"),
                   "acc_norm", ("acc", "acc_norm")),
    CapabilityTask("arc_challenge", "arc/arc_challenge.yaml", ARC_CHALLENGE,
                   _keep("id", "question", "choices", "answerKey"), "acc_norm", ("acc", "acc_norm")),
    CapabilityTask("piqa", "piqa/piqa.yaml", PIQA, _keep("goal", "sol1", "sol2", "label"), "acc_norm",
                   ("acc", "acc_norm")),
    CapabilityTask("winogrande", "winogrande/default.yaml", WINOGRANDE, winogrande_doc, "acc"),
    CapabilityTask("mmlu", "mmlu/default/mmlu_{subject}.yaml", MMLU, _keep("question", "subject", "choices", "answer"),
                   "acc", per_subject=True),
    CapabilityTask("lambada_openai", "lambada/lambada_openai.yaml", LAMBADA, _keep("text"), "acc",
                   ("acc", "perplexity")),
    CapabilityTask("sciq", "sciq/sciq.yaml", SCIQ,
                   _keep("question", "distractor1", "distractor2", "distractor3", "correct_answer", "support"),
                   "acc_norm", ("acc", "acc_norm")),
    CapabilityTask("openbookqa", "openbookqa/openbookqa.yaml", OPENBOOKQA,
                   _keep("id", "question_stem", "choices", "answerKey"), "acc_norm", ("acc", "acc_norm"),
                   reconstructed=RECONSTRUCTED["openbookqa"]),
    CapabilityTask("boolq", "super_glue/boolq/default.yaml", BOOLQ, _keep("question", "passage", "label"), "acc",
                   reconstructed=RECONSTRUCTED["boolq"]),
    CapabilityTask("hellaswag", "hellaswag/hellaswag.yaml", HELLASWAG, hellaswag_doc, "acc_norm",
                   ("acc", "acc_norm"), reconstructed=RECONSTRUCTED["hellaswag"]),
)}

METRIC_DOCS = {"acc": "{task}: lm-eval acc, the likeliest choice is right (higher is better)",
               "acc_norm": "{task}: lm-eval acc_norm, choices compared by log-likelihood per byte (higher is better)",
               "perplexity": "{task}: perplexity of the final word (lower is better)"}

# The wrapper evaluates the "test" split of the local JSONL; the stock task's other splits are not there, and
# naming them would make lm-eval look for few-shot examples in them (this suite is zero-shot).
SPLIT_OVERRIDES = {"training_split": None, "validation_split": None, "fewshot_split": None, "test_split": "test"}


def task_yaml(task: CapabilityTask, subject: str | None = None) -> Path:
    return builtin_task_yaml(task.yaml.format(subject=subject) if task.per_subject else task.yaml)


def mmlu_category(subject: str) -> str:
    """lm-eval's MMLU category of a subject (the ``tag`` of its YAML): stem, humanities, social_sciences, other."""
    tag = yaml.safe_load(task_yaml(TASKS["mmlu"], subject).read_text(encoding="utf-8")).get("tag", "")
    return str(tag).removeprefix("mmlu_").removesuffix("_tasks") or "unknown"


class CapabilityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(default_factory=lambda: list(TASKS), description="lm-eval tasks to run")
    per_task_limit: int | None = Field(DEFAULT_PER_TASK_LIMIT, ge=2,
                                       description="Documents sampled (seeded) per task; MMLU spread over its "
                                                   "subjects; null: every document (the GPU setting)")
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval's bootstrap iterations for its perplexity stderr "
                                                         "(means use the closed form); 0: no lm-eval stderr")

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        import difflib

        for t in tasks:
            if t not in TASKS:
                close = difflib.get_close_matches(t, TASKS, n=1)
                raise ValueError(f"unknown task {t!r} (" + (f"did you mean {close[0]!r}?" if close else
                                                             f"known: {', '.join(TASKS)}") + ")")
        if not tasks:
            raise ValueError("no tasks")
        return list(dict.fromkeys(tasks))


def chance(task: str, sample: dict[str, Any]) -> float:
    """Chance score of one lm-eval sample: 1 / number of choices (0 for LAMBADA's single continuation); for
    TruthfulQA MC2 (probability mass on the true answers) the share of true answers among the choices."""
    if task == "truthfulqa_mc2":
        labels = sample["doc"]["mc2_targets"]["labels"]
        return float(np.mean(labels))
    n = len(sample["arguments"])
    return 0.0 if n <= 1 else 1.0 / n


def normalised(correct: np.ndarray, chance_level: np.ndarray) -> np.ndarray:
    """Per-item chance-corrected score: (correct - chance) / (1 - chance); its mean is 0 at chance, 1 when all right."""
    return (correct - chance_level) / (1.0 - chance_level)


def _mean_of_means(*groups: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean([np.mean(g, axis=axis) for g in groups], axis=0)


@register_suite
class CapabilitySuite(Suite):
    name = "capability"
    description = ("General ability via lm-eval's own tasks (TruthfulQA, ARC, PIQA, WinoGrande, MMLU, LAMBADA, SciQ, "
                   "OpenBookQA, BoolQ, HellaSwag): the alignment tax, base vs tuned.")
    kind = "lm-eval"
    sources = (TRUTHFULQA, ARC_EASY, ARC_CHALLENGE, PIQA, WINOGRANDE, MMLU, LAMBADA, SCIQ, OPENBOOKQA, BOOLQ,
               HELLASWAG)
    stratify_by = None
    Options = CapabilityOptions
    metrics_doc = {"mean_normalised": "mean over tasks (TruthfulQA excluded) of the chance-corrected headline "
                                      "accuracy: 0 = chance, 1 = perfect (higher is better)"}
    metrics_doc |= {f"{t.name}/{m}": METRIC_DOCS[m].format(task=t.name) for t in TASKS.values() for m in t.metrics}
    metrics_doc |= {f"{t.name}/normalised": f"{t.name}: {t.headline} corrected for chance (higher is better)"
                    for t in TASKS.values()}
    metrics_doc |= {"truthfulqa_mc1/acc": "TruthfulQA MC1: the single true answer is the likeliest choice (higher is "
                                          "better)",
                    "truthfulqa_mc2/acc": "TruthfulQA MC2: normalised probability mass on the true answers (higher is "
                                          "better)",
                    "lambada_openai/acc": "LAMBADA: the greedy continuation is exactly the final word (higher is "
                                          "better)"}

    def applies_system_prompt(self, cfg: SuiteConfig) -> bool:
        return False  # lm-eval scores raw text: no chat turn to put a system prompt before

    def check(self, cfg: SuiteConfig) -> None:
        super().check(cfg)
        if cfg.limit is not None:
            raise SuiteConfigError(f"evals.suites[{self.name}].limit: this suite samples per task; set "
                                   f"options.per_task_limit instead (null: full tasks)")
        if cfg.source is not None or cfg.sources is not None:
            raise SuiteConfigError(f"evals.suites[{self.name}]: choose tasks with options.tasks; re-point data with "
                                   f"the data mirror (mirror.yaml) rather than source/sources")

    def selected_tasks(self, cfg: SuiteConfig) -> list[CapabilityTask]:
        return [TASKS[t] for t in self.options(cfg).tasks]

    def items_from_rows(self, src: SourceRows, options: Any) -> list[EvalItem]:
        raise NotImplementedError  # load() builds items per task

    def load(self, cfg: SuiteConfig, mirror: str | None) -> Loaded:
        """Per task: its rows -> lm-eval documents -> ``per_task_limit`` of them, seeded (MMLU stratified by
        subject, so every subject is represented)."""
        self.check(cfg)
        options = self.options(cfg)
        rows_by_source: dict[str, SourceRows] = {}
        items: list[EvalItem] = []
        sources: list[dict[str, Any]] = []
        for task in self.selected_tasks(cfg):
            spec = task.source
            if spec.key not in rows_by_source:
                rows_by_source[spec.key] = self.read_source(spec, None, mirror, options)
            src = rows_by_source[spec.key]
            task_items = []
            for i, row in enumerate(src.rows):
                try:
                    doc = task.doc(row)
                except (KeyError, TypeError, ValueError) as err:
                    from evals.suites.sources import SourceError

                    raise SourceError(f"suite {self.name}, task {task.name} ({src.origin.get('path') or src.origin}) "
                                      f"row {i + 1}: not in the schema lm-eval's {task.name} reads: {err!r}") from None
                meta = {"source": spec.key, "task": task.name, "row": i, "doc": doc}
                if task.per_subject:
                    meta["subject"] = doc["subject"]
                task_items.append(EvalItem(f"{task.name}-{i}", "", meta))
            picked = sample_items(task_items, options.per_task_limit, cfg.seed,
                                  "subject" if task.per_subject else None)
            items.extend(picked)
            sources.append({"key": spec.key, "task": task.name, "licence": spec.licence, "origin": src.origin,
                            "rows": len(src.rows), "items": len(task_items), "used": len(picked),
                            "reconstructed": task.reconstructed})
        return Loaded(items, sources)

    QUERY_FIELDS = ("question", "goal", "question_stem", "sentence", "ctx_a", "text")

    def eval_prompts(self, cfg: SuiteConfig, mirror: str | None) -> list[str]:
        """Each sampled document's question (TruthfulQA/ARC/MMLU/SciQ/BoolQ question, PIQA goal, OBQA stem,
        WinoGrande sentence, HellaSwag context, LAMBADA passage): a training row asking exactly that is held out of
        the mixture, as for every other suite (align.mixture's leak check)."""
        prompts = []
        for it in self.load(cfg, mirror).items:
            doc = it.meta["doc"]
            text = next((doc[f] for f in self.QUERY_FIELDS if isinstance(doc.get(f), str) and doc[f].strip()), None)
            if text:
                prompts.append(text.strip())
        return prompts

    # --- running -------------------------------------------------------------------------------------------
    def local_tasks(self, items: list[EvalItem]) -> list[tuple[LocalTask, list[int]]]:
        """One lm-eval task per capability task (per MMLU subject), with the indices of its items."""
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it.meta["task"], it.meta.get("subject")), []).append(i)
        out = []
        for (name, subject), idx in groups.items():
            task = TASKS[name]
            lm_name = f"harmgate_cap_{name}" + (f"_{subject}" if subject else "")
            out.append((LocalTask(lm_name, task_yaml(task, subject), [items[i].meta["doc"] for i in idx],
                                  dict(SPLIT_OVERRIDES)), idx))
        return out

    def run(self, model, tokenizer, cfg: SuiteConfig, ctx: SuiteContext) -> SuiteResult:
        import lm_eval

        loaded = self.load(cfg, ctx.mirror)
        options = self.options(cfg)
        local = self.local_tasks(loaded.items)
        work_dir = ctx.work_dir / "lm_eval" if ctx.work_dir else None
        started = time.time()
        outputs = run_tasks(model, tokenizer, [t for t, _ in local], work_dir=work_dir,
                            batch_size=ctx.generation.batch_size, bootstrap_iters=options.bootstrap_iters)
        seconds = time.time() - started
        per_item: list[dict[str, Any] | None] = [None] * len(loaded.items)
        for t, idx in local:
            for i, s in zip(idx, outputs[t.name].samples):
                per_item[i] = s
        result = self.summarise(loaded.items, per_item, {t.name: outputs[t.name] for t, _ in local}, cfg, ctx)
        result.info.update({
            "sources": loaded.sources,
            "per_task_limit": options.per_task_limit, "num_fewshot": 0,
            "reconstructed": {t.name: t.reconstructed for t in self.selected_tasks(cfg) if t.reconstructed},
            "lm_eval": {"version": getattr(lm_eval, "__version__", None), "seconds": round(seconds, 2),
                        "tasks": {t.name: {"includes": str(t.base_yaml), "yaml": str(outputs[t.name].yaml_path),
                                           "data": str(outputs[t.name].data_path),
                                           "results": outputs[t.name].results, "stderr": outputs[t.name].stderrs}
                                  for t, _ in local}}})
        return result

    def summarise(self, items: list[EvalItem], samples: list[dict[str, Any] | None], outputs: dict[str, TaskOutput],
                  cfg: SuiteConfig, ctx: SuiteContext) -> SuiteResult:
        metrics: dict[str, dict[str, Any]] = {}
        aggregate_arrays: list[np.ndarray] = []
        by_task: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_task.setdefault(it.meta["task"], []).append(i)
        for task in self.selected_tasks(cfg):
            idx = by_task.get(task.name, [])
            ss = [samples[i] for i in idx]
            lm_results = [o for name, o in outputs.items()
                          if name == f"harmgate_cap_{task.name}" or name.startswith(f"harmgate_cap_{task.name}_")]
            metrics.update(self._task_metrics(task, ss, lm_results, ctx.boot))
            if task.in_aggregate and ss:
                aggregate_arrays.append(normalised(np.array([float(s[task.headline]) for s in ss]),
                                                   np.array([chance(task.name, s) for s in ss])))
        if aggregate_arrays:
            value = float(_mean_of_means(*aggregate_arrays))
            ci = bootstrap_ci(aggregate_arrays, _mean_of_means, vectorized=True, boot=ctx.boot)
            metrics["mean_normalised"] = metric(value, sum(a.size for a in aggregate_arrays), ci,
                                                tasks=len(aggregate_arrays))
        breakdowns = self._mmlu_breakdowns(items, samples, ctx.boot)
        records = [self._record(it, s) for it, s in zip(items, samples)]
        return SuiteResult(metrics, breakdowns, records)

    def _task_metrics(self, task: CapabilityTask, ss: list[dict[str, Any]], outputs: list[TaskOutput],
                      boot: Bootstrap) -> dict[str, dict[str, Any]]:
        if not ss:
            return {}
        out: dict[str, dict[str, Any]] = {}
        only = outputs[0] if len(outputs) == 1 else None  # MMLU's subjects: the pooled value is recomputed below
        for name in task.metrics:
            values = [float(s[name]) for s in ss]
            if name == "perplexity":
                # lm-eval's aggregation: exp(-mean log-likelihood of the target word)
                lls = np.array(values)
                m = metric(float(np.exp(-lls.mean())), lls.size,
                           bootstrap_ci([lls], lambda a, axis=-1: np.exp(-np.mean(a, axis=axis)), vectorized=True,
                                        boot=boot))
            elif task.name == "truthfulqa_mc2":
                m = mean_metric(values, boot)  # a probability mass per question, not a 0/1 outcome
            else:
                m = rate_metric([v >= 0.5 for v in values], boot=boot)
            if only is not None:
                self._check(f"{task.name}/{name}", only.results.get(name), m["value"])
                if only.stderrs.get(name) is not None:
                    m["stderr"] = only.stderrs[name]
            elif name == "acc" and outputs:  # pooled standard error of the size-weighted mean over subjects
                sizes = np.array([len(o.samples) for o in outputs], dtype=float)
                errs = [o.stderrs.get(name) for o in outputs]
                if all(e is not None for e in errs):
                    m["stderr"] = float(np.sqrt(np.sum((sizes / sizes.sum()) ** 2 * np.square(errs))))
            if task.reconstructed:
                m["note"] = "reconstructed data: " + task.reconstructed
            out[f"{task.name}/{name}"] = m
        head = np.array([float(s[task.headline]) for s in ss])
        level = np.array([chance(task.name, s) for s in ss])
        norm = mean_metric(normalised(head, level).tolist(), boot)
        out[f"{task.name}/normalised"] = norm | {"of": task.headline, "chance": float(level.mean())}
        return out

    @staticmethod
    def _check(name: str, lm_eval_value: Any, ours: float | None) -> None:
        if lm_eval_value is None or ours is None:
            return
        if abs(float(lm_eval_value) - ours) > 1e-6 * max(1.0, abs(ours)):
            raise RuntimeError(f"capability: {name} = {lm_eval_value} by lm-eval's aggregation but {ours} from its "
                               f"per-sample records; lm-eval changed how it aggregates this task")

    @staticmethod
    def _mmlu_breakdowns(items: list[EvalItem], samples: list[dict[str, Any] | None],
                         boot: Bootstrap) -> dict[str, dict[str, dict[str, Any]]]:
        subjects: dict[str, list[bool]] = {}
        for it, s in zip(items, samples):
            if it.meta["task"] == "mmlu" and s is not None:
                subjects.setdefault(it.meta["subject"], []).append(bool(s["acc"]))
        if not subjects:
            return {}
        categories: dict[str, list[bool]] = {}
        for subject, flags in subjects.items():
            categories.setdefault(mmlu_category(subject), []).extend(flags)
        return {"mmlu_subject": {g: {"acc": rate_metric(f, boot=boot)} for g, f in sorted(subjects.items())},
                "mmlu_category": {g: {"acc": rate_metric(f, boot=boot)} for g, f in sorted(categories.items())}}

    @staticmethod
    def _record(item: EvalItem, s: dict[str, Any] | None) -> dict[str, Any]:
        task = TASKS[item.meta["task"]]
        args = s["arguments"] if s else []
        context = args[0][0] if args else ""
        scores: dict[str, Any] = {m: s.get(m) for m in task.metrics} if s else {}
        if s and len(args) > 1:
            lls = [r[0] for r in s["filtered_resps"]]
            target = s.get("target")
            # lm-eval's WinoGrande target is the shared continuation; its gold choice is the answer ("1"/"2")
            gold = int(s["doc"]["answer"]) - 1 if task.name == "winogrande" else target
            scores.update({"choices": [a[1] for a in args], "logliks": lls, "target": target,
                           "gold": int(gold) if isinstance(gold, (int, str)) and str(gold).isdigit() else None,
                           "picked": int(np.argmax(lls))})
            if len({a[0] for a in args}) > 1:  # WinoGrande: the choice is in the context, the continuation shared
                scores["contexts"] = [a[0] for a in args]
        meta = {k: item.meta[k] for k in ("task", "row", "subject") if k in item.meta}
        return sample_record(EvalItem(item.id, context, meta), args[0][1] if len(args) == 1 else None, scores)
