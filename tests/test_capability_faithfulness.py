"""The capability suite's local-file tasks are lm-eval's stock tasks: same per-item prompts (Instance arguments),
same targets, same metric, on the same rows. Where the offline file is a reconstruction (HellaSwag, BoolQ,
OpenBookQA), the tests pin how it differs from lm-eval's data.

"Stock task" here is lm-eval's own YAML loaded as lm-eval loads it (``load_yaml`` + ``ConfigurableTask``), with
only its download replaced by the same rows in memory under the split names the YAML declares. "Ours" is the
wrapper the suite writes (``include:`` + ``dataset_path: json``), registered through ``TaskManager`` as in a run.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from evals.lm_eval_tasks import write_task
from evals.suites.capability import SPLIT_OVERRIDES, TASKS, hellaswag_doc, task_yaml
from evals.suites.sources import read_path_rows

SLICE = 6  # rows per task: the first ones of the file plus a seeded few


def _rows(shared_data: Path, task) -> list[dict]:
    rows = read_path_rows(shared_data / task.source.mirror)
    picked = sorted(set(range(3)) | set(random.Random(task.name).sample(range(len(rows)), SLICE - 3)))
    return [rows[i] for i in picked]


def _stock_task(yaml_path: Path, docs: list[dict]):
    """lm-eval's stock task from its own YAML, its dataset the given documents (every split it names)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(yaml_path, resolve_func=True)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    splits = {cfg.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")} - {None}

    class InMemory(ConfigurableTask):
        def download(self, dataset_kwargs=None, **kwargs) -> None:
            self.dataset = datasets.DatasetDict({s: datasets.Dataset.from_list(docs) for s in splits})

    return InMemory(config=cfg)


def _our_task(tmp_path: Path, name: str, yaml_path: Path, docs: list[dict]):
    from evals.lm_eval_tasks import LocalTask
    from lm_eval.tasks import TaskManager

    task = LocalTask(name, yaml_path, docs, dict(SPLIT_OVERRIDES))
    write_task(task, tmp_path)
    manager = TaskManager(include_path=str(tmp_path.resolve()), include_defaults=False)
    return manager.load_task_or_group([name])[name]


def _instances(task) -> dict[int, list[tuple]]:
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(rank=0, world_size=1)
    out: dict[int, list[tuple]] = {}
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        out.setdefault(inst.doc_id, []).append(tuple(inst.arguments))
    return out


def _fake_results(n_requests: int, rng: random.Random) -> list[tuple[float, bool]]:
    return [(-rng.uniform(0.1, 30.0), rng.random() < 0.3) for _ in range(n_requests)]


def _pairs(shared_data: Path, tmp_path: Path):
    """(name, stock task, our task, docs) for every capability task (two MMLU subjects)."""
    out = []
    for task in TASKS.values():
        rows = _rows(shared_data, task)
        if task.per_subject:
            for subject in ("abstract_algebra", "high_school_us_history"):
                all_rows = [r for r in read_path_rows(shared_data / task.source.mirror) if r["subject"] == subject]
                docs = [task.doc(r) for r in all_rows[:SLICE]]
                yaml_path = task_yaml(task, subject)
                out.append((f"mmlu_{subject}", _stock_task(yaml_path, docs),
                            _our_task(tmp_path, f"faith_mmlu_{subject}", yaml_path, docs), docs))
            continue
        docs = [task.doc(r) for r in rows]
        yaml_path = task_yaml(task)
        out.append((task.name, _stock_task(yaml_path, docs), _our_task(tmp_path, f"faith_{task.name}", yaml_path,
                                                                       docs), docs))
    return out


@pytest.fixture(scope="module")
def pairs(shared_data, tmp_path_factory):
    return _pairs(shared_data, tmp_path_factory.mktemp("faith"))


def test_every_task_builds_the_stock_tasks_requests_and_metric(pairs):
    rng = random.Random(0)
    assert {name for name, *_ in pairs} >= set(TASKS) - {"mmlu"}
    for name, stock, ours, docs in pairs:
        stock_inst, our_inst = _instances(stock), _instances(ours)
        assert len(our_inst) == len(docs), name
        # the per-item prompts: (context, continuation) of every request, byte for byte
        assert our_inst == stock_inst, name
        stock_docs, our_docs = list(stock.eval_docs), list(ours.eval_docs)
        for i, (sd, od) in enumerate(zip(stock_docs, our_docs)):
            assert ours.doc_to_target(od) == stock.doc_to_target(sd), (name, i)
            # the same lm-eval scoring on the same (made-up) log-likelihoods
            results = _fake_results(len(our_inst[i]), rng)
            assert ours.process_results(od, results) == stock.process_results(sd, results), (name, i)
        assert {k: v.__name__ for k, v in ours.aggregation().items()} == \
            {k: v.__name__ for k, v in stock.aggregation().items()}, name
        assert ours.higher_is_better() == stock.higher_is_better(), name


def test_local_tasks_score_like_the_stock_tasks_on_a_model(pairs, tiny):
    """End to end through lm-eval's evaluator on the tiny model: per-sample metrics and aggregates identical."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8)
    # three request shapes (shared context; a context per choice; one-token letter answers) with short prompts
    # (the tiny tokenizer is nearly byte-level); every task's requests and scoring are compared above
    picked = [p for p in pairs if p[0] in ("arc_challenge", "winogrande", "mmlu_abstract_algebra")]
    out = lm_eval.simple_evaluate(model=lm, tasks=[t for p in picked for t in p[1:3]], num_fewshot=0,
                                  log_samples=True, bootstrap_iters=0, random_seed=0)
    label = {"alias": None, "name": None}
    for name, stock, ours, _ in picked:
        s_name, o_name = stock.config.task, ours.config.task
        assert out["results"][o_name] | label == out["results"][s_name] | label, name
        s_samples = sorted(out["samples"][s_name], key=lambda s: s["doc_id"])
        o_samples = sorted(out["samples"][o_name], key=lambda s: s["doc_id"])
        assert len(o_samples) == len(s_samples) == SLICE, name
        for s, o in zip(s_samples, o_samples):
            assert o["arguments"] == s["arguments"] and o["resps"] == s["resps"], name
            for metric in stock.aggregation():
                assert o[metric] == s[metric], (name, metric)


# --- the reconstructed files: what differs from lm-eval's data, pinned -------------------------------------------

def test_hellaswag_file_query_is_lm_evals_preprocessing_except_ctx_b_capitalisation(shared_data, pairs):
    """The mirror's rows carry their own query; lm-eval's process_docs, fed the joined context as ctx_a, rebuilds
    it exactly. What it cannot rebuild is lm-eval's capitalisation of ctx_b, shown on validation row 0 (hub
    fields: activity_label "Roof shingle removal", ctx_a "A man is sitting on a roof.", ctx_b "he")."""
    _, stock, ours, docs = next(p for p in pairs if p[0] == "hellaswag")
    rows = _rows(shared_data, TASKS["hellaswag"])
    for row, doc in zip(rows, ours.eval_docs):
        assert doc["query"] == row["query"]
        assert doc["choices"] == row["endings_pp"]
    hub_row0 = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
                "endings": rows[0]["endings_pp"], "label": "3"}
    lm_eval_query = _stock_task(task_yaml(TASKS["hellaswag"]), [hub_row0]).eval_docs[0]["query"]
    ours_query = list(ours.eval_docs)[0]["query"]
    assert lm_eval_query == "Roof shingle removal: A man is sitting on a roof. He"
    assert ours_query == "Roof shingle removal: A man is sitting on a roof. he"
    # hub rows pass through hellaswag_doc unchanged, so connected users get lm-eval's exact prompts
    assert hellaswag_doc(hub_row0) == hub_row0


def test_boolq_passages_lack_super_glues_title_prefix(shared_data, pairs):
    """super_glue/boolq passages read "<Wikipedia title> -- <passage>"; the rebuilt file has the bare passage, so
    each prompt is lm-eval's template minus that prefix (and the model sees no title)."""
    _, stock, ours, docs = next(p for p in pairs if p[0] == "boolq")
    for doc in list(ours.eval_docs):
        prompt = ours.doc_to_text(doc)
        assert prompt == f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
        assert not re.match(r"^[^\n.]{1,80} -- ", doc["passage"]), doc["passage"][:100]
    titled = dict(docs[0], passage="Ethanol fuel -- " + docs[0]["passage"])
    assert stock.doc_to_text(titled) == "Ethanol fuel -- " + ours.doc_to_text(docs[0])


def test_openbookqa_rebuilt_rows_have_bare_question_stems(shared_data):
    """llm-foundry's copy kept the question stem as its query: no template text crept in, four choices each,
    answer keys A-D. (The original ids are lost: the file's ids are synthetic.)"""
    rows = read_path_rows(shared_data / TASKS["openbookqa"].source.mirror)
    assert len(rows) == 500
    for r in rows:
        assert not re.search(r"(^Question:|\nAnswer:|\n[A-D][.)] )", r["question_stem"]), r["id"]
        assert r["choices"]["label"] == ["A", "B", "C", "D"] and r["answerKey"] in "ABCD"
        assert r["id"].startswith("llmfoundry-")
