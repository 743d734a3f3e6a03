"""lm-evaluation-harness tasks over local files: how the bias suites run offline and on hub data alike.

lm-eval's own CrowS-Pairs and BBQ tasks load their data from the hub. harmgate keeps their task definitions
(prompt format, choices, ``process_results``, aggregations) and swaps only the data: for each run it writes

    <work_dir>/<task>.jsonl   the sampled documents (from the mirror or from a hub download)
    <work_dir>/<task>.yaml    include: <the task's YAML>  + dataset_path: json + data_files: <the JSONL>

and registers the folder with ``TaskManager(include_path=...)``. Both paths are absolute (lm-eval resolves
relative data_files against the working directory). Tasks lm-eval does not have (WinoBias) are shipped here as
YAML and wrapped the same way. The model is evaluated in memory: ``HFLM(pretrained=model, tokenizer=...)``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SHIPPED_DIR = Path(__file__).resolve().parent


class LmEvalError(RuntimeError):
    pass


def builtin_task_yaml(relpath: str) -> Path:
    """A YAML of lm-eval's own task library, e.g. ``crows_pairs/crows_pairs_english.yaml``."""
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).resolve().parent / relpath
    if not path.is_file():
        import lm_eval

        raise LmEvalError(f"lm-eval {getattr(lm_eval, '__version__', '?')} has no task file {relpath} "
                          f"(looked in {path.parent})")
    return path


def shipped_task_yaml(name: str) -> Path:
    path = SHIPPED_DIR / name
    if not path.is_file():
        raise LmEvalError(f"harmgate ships no lm-eval task {name} in {SHIPPED_DIR}")
    return path


@dataclass(frozen=True)
class LocalTask:
    name: str                      # task name registered with lm-eval (unique within one work dir)
    base_yaml: Path                # the task definition it includes
    docs: list[dict[str, Any]]     # documents, in doc_id order
    overrides: dict[str, Any] = field(default_factory=dict)  # wrapper keys beyond the data swap


@dataclass
class TaskOutput:
    name: str
    results: dict[str, Any]        # lm-eval's aggregated metrics, keys without the ",none" filter suffix
    stderrs: dict[str, Any]        # lm-eval's standard error per metric (empty when bootstrap_iters=0)
    samples: list[dict[str, Any]]  # per document, in doc_id order: lm-eval's sample record (doc, resps, metrics)
    yaml_path: Path
    data_path: Path


def write_task(task: LocalTask, work_dir: Path) -> tuple[Path, Path]:
    """The JSONL of documents and the wrapper YAML, both with absolute paths."""
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    data_path = work_dir / f"{task.name}.jsonl"
    with data_path.open("w", encoding="utf-8") as f:
        for doc in task.docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    wrapper = {
        "include": str(task.base_yaml.resolve()),
        "task": task.name,
        "tag": [],  # the built-in task's tags (crows_pairs, social_bias) would pull in sibling tasks
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data_path)}},
        "test_split": "test",
        **task.overrides,
    }
    yaml_path = work_dir / f"{task.name}.yaml"
    yaml_path.write_text(yaml.safe_dump(wrapper, sort_keys=False), encoding="utf-8")
    return yaml_path, data_path


def _plain(value: Any) -> Any:
    """numpy scalars / arrays -> Python values and NaN -> None, so results serialise as strict JSON."""
    import math

    import numpy as np

    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def shared_prefix_lm(model, tokenizer, batch_size: int):
    """lm-eval's HFLM whose log-likelihood requests go through :func:`evals.suites.loglik.score_token_pairs`:
    requests with one context (a multiple-choice question's answers) share one row, so the context is computed
    once instead of once per answer. HFLM itself only reuses logits for one-token continuations. Same request
    order, same (log-probability, is-greedy) results."""
    from lm_eval.models.huggingface import HFLM

    from evals.suites.loglik import score_token_pairs

    class SharedPrefixHFLM(HFLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            bs = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 8)
            scores = score_token_pairs(self.model, [(ctx, cont) for _, ctx, cont in requests], batch_size=bs,
                                       max_length=self.max_length, pad_id=self.tokenizer.pad_token_id or 0,
                                       disable_tqdm=disable_tqdm, desc="lm-eval log-likelihood")
            out = []
            for (request, _, _), score in zip(requests, scores):
                answer = (score.logprob, score.greedy)
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, answer)
                out.append(answer)
            return out

    return SharedPrefixHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def run_tasks(model, tokenizer, tasks: list[LocalTask], *, work_dir: Path | None = None,
              batch_size: int = 8, share_prefixes: bool = True, bootstrap_iters: int = 0) -> dict[str, TaskOutput]:
    """Evaluate ``tasks`` on an in-memory model through lm-eval's task machinery (zero-shot).

    ``share_prefixes``: score log-likelihood requests through :func:`shared_prefix_lm` (else lm-eval's HFLM).
    ``bootstrap_iters`` > 0 asks lm-eval for its standard errors too (closed form for means, its bootstrap for
    perplexity); 0 skips them where harmgate's own intervals are all that is used."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from evals.parallel import is_main

    if work_dir is None or not is_main():  # under a multi-process launch only the main process writes work_dir
        work_dir = Path(tempfile.mkdtemp(prefix="harmgate-lm-eval-"))
    paths = {t.name: write_task(t, work_dir) for t in tasks}
    manager = TaskManager(include_path=str(work_dir.resolve()), include_defaults=False)
    missing = [t.name for t in tasks if t.name not in manager.all_tasks]
    if missing:
        raise LmEvalError(f"lm-eval did not register {missing} from {work_dir}")
    lm = (shared_prefix_lm(model, tokenizer, batch_size) if share_prefixes
          else HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size))
    out = lm_eval.simple_evaluate(model=lm, tasks=[t.name for t in tasks], task_manager=manager, num_fewshot=0,
                                  log_samples=True, bootstrap_iters=bootstrap_iters, random_seed=0)
    if out is None:
        raise LmEvalError("lm-eval returned no results")
    outputs = {}
    for t in tasks:
        raw = out["results"][t.name]
        results = {k.removesuffix(",none"): _plain(v) for k, v in raw.items() if not k.endswith("_stderr,none")}
        stderrs = {k.removesuffix("_stderr,none"): _plain(v) for k, v in raw.items()
                   if k.endswith("_stderr,none") and isinstance(_plain(v), (int, float))}
        samples = sorted(out["samples"][t.name], key=lambda s: s["doc_id"])
        if len(samples) != len(t.docs):
            raise LmEvalError(f"{t.name}: lm-eval scored {len(samples)} of {len(t.docs)} documents")
        outputs[t.name] = TaskOutput(t.name, results, stderrs, samples, *paths[t.name])
    return outputs
