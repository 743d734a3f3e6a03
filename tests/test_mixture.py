from __future__ import annotations

import gzip
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from align.mixture import (DataLeakError, allocate, build_mixture, check_no_leakage, read_mixture,
                           write_mixture)
from align.sources import DataSourceError, read_file, read_source
from harmgate.config import DataConfig, DataSource
from harmgate.mirror import DATA_MIRROR_ENV
from harmgate.rundir import RunDir, read_json


@pytest.fixture(autouse=True)
def _no_mirror(monkeypatch):
    monkeypatch.delenv(DATA_MIRROR_ENV, raising=False)


def hh(prompt: str, reply: str) -> dict:
    return {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {reply}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: no"}


def write_jsonl(path: Path, rows: list, *, gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def hh_file(tmp_path: Path, n: int, name: str = "hh.jsonl", tag: str = "hh") -> str:
    return str(write_jsonl(tmp_path / name, [hh(f"{tag} question {i}", f"{tag} answer {i}") for i in range(n)]))


def inst_file(tmp_path: Path, n: int, name: str = "inst.json") -> str:
    rows = [{"instruction": f"task {i}", "input": "", "output": f"done {i}"} for i in range(n)]
    (tmp_path / name).write_text(json.dumps(rows))
    return str(tmp_path / name)


def config(*sources: dict, **kw) -> DataConfig:
    return DataConfig.model_validate({"sources": list(sources), **kw})


def check_counts(manifest: dict) -> None:
    for s in manifest["sources"]:
        assert s["rows_read"] == s["usable"] + sum(s["skipped"].values()), s
        assert s["used"] <= s["usable"]
    assert manifest["totals"]["examples"] == sum(s["used"] for s in manifest["sources"])


def test_examples_shape_and_manifest(tmp_path):
    cfg = config({"id": hh_file(tmp_path, 5), "format": "hh"},
                 {"id": inst_file(tmp_path, 4), "format": "instruction", "licence": "CC0"})
    mix = build_mixture(cfg)
    assert len(mix.examples) == 9
    ex = next(e for e in mix.examples if e["source"].endswith("hh.jsonl"))
    assert ex["prompt"][0]["role"] == "user" and ex["prompt"][0]["content"].startswith("hh question")
    assert ex["completion"] == [{"role": "assistant", "content": ex["prompt"][0]["content"].replace("question", "answer")}]
    m = mix.manifest
    assert m["sampling"] == "all_usable" and m["seed"] == 1234
    hh_entry, inst_entry = m["sources"]
    assert hh_entry["field"] == "chosen" and inst_entry["field"] is None
    assert hh_entry["resolved"]["path"].endswith("hh.jsonl") and len(hh_entry["resolved"]["sha256"]) == 64
    assert hh_entry["licence"] == "unknown" and inst_entry["licence"] == "CC0"
    assert inst_entry["licence_origin"] == "config"
    check_counts(m)


def test_rejected_field_is_a_negative(tmp_path):
    mix = build_mixture(config({"id": hh_file(tmp_path, 3), "format": "hh", "field": "rejected", "label": "negative"}))
    assert {e["completion"][0]["content"] for e in mix.examples} == {"no"}
    assert {e["label"] for e in mix.examples} == {"negative"}


def test_rejected_replies_cannot_be_positives():
    with pytest.raises(ValueError, match="set label: negative"):
        config({"id": "x", "format": "hh", "field": "rejected"})


def test_pair_field_builds_preference_pairs(tmp_path):
    mix = build_mixture(config({"id": hh_file(tmp_path, 3), "format": "hh", "field": "pair"}))
    ex = mix.examples[0]
    assert set(ex) == {"prompt", "chosen", "rejected", "source"}
    assert ex["chosen"][0]["role"] == ex["rejected"][0]["role"] == "assistant"
    assert ex["rejected"][0]["content"] == "no"


def test_pair_with_different_prefixes_is_skipped_with_reason(tmp_path):
    row = {"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: b\n\nAssistant: no"}
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    mix = build_mixture(config({"id": str(path), "format": "hh", "field": "pair"}))
    assert mix.examples == [] and mix.manifest["sources"][0]["skipped"] == {"pair_prompt_mismatch": 1}


def test_weights_and_determinism(tmp_path):
    cfg = config({"id": hh_file(tmp_path, 200), "format": "hh", "weight": 3},
                 {"id": inst_file(tmp_path, 200), "format": "instruction", "weight": 1},
                 max_examples=100, seed=7)
    a, b = build_mixture(cfg), build_mixture(cfg)
    assert [s["used"] for s in a.manifest["sources"]] == [75, 25]
    assert [s["target"] for s in a.manifest["sources"]] == [75, 25]
    assert a.examples == b.examples
    assert a.manifest["sampling"] == "weighted_shares"
    # Shuffled: the two sources are interleaved, not concatenated.
    kinds = [e["source"].endswith("hh.jsonl") for e in a.examples]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)
    other = build_mixture(cfg.model_copy(update={"seed": 8}))
    assert other.examples != a.examples
    assert [s["used"] for s in other.manifest["sources"]] == [75, 25]
    check_counts(a.manifest)


def test_short_source_taken_whole_and_recorded(tmp_path):
    cfg = config({"id": hh_file(tmp_path, 10), "format": "hh", "weight": 1},
                 {"id": inst_file(tmp_path, 200), "format": "instruction", "weight": 1},
                 max_examples=60)
    mix = build_mixture(cfg)
    small, big = mix.manifest["sources"]
    assert (small["target"], small["used"], small["short_by"]) == (30, 10, 20)
    assert (big["target"], big["used"], big["short_by"]) == (30, 50, 0)  # shortfall re-shared by weight
    assert len(mix.examples) == 60
    assert len({json.dumps(e) for e in mix.examples}) == 60  # never upsampled
    assert any("fewer than its 30-row weight share" in n for n in mix.manifest["notes"])


def test_max_examples_beyond_all_rows(tmp_path):
    mix = build_mixture(config({"id": hh_file(tmp_path, 5), "format": "hh"}, max_examples=50))
    assert len(mix.examples) == 5
    assert any("fewer than max_examples=50" in n for n in mix.manifest["notes"])


def test_allocate():
    assert allocate([100, 100], [1, 1], 10) == [5, 5]
    assert allocate([100, 100, 100], [1, 1, 1], 10) == [4, 3, 3]  # largest remainder, ties by order
    assert allocate([2, 100, 100], [1, 1, 2], 40) == [2, 13, 25]
    assert allocate([2, 3], [1, 1], 40) == [2, 3]
    assert allocate([0, 50], [5, 1], 10) == [0, 10]


def test_limit(tmp_path):
    mix = build_mixture(config({"id": hh_file(tmp_path, 50), "format": "hh", "limit": 12}))
    assert mix.manifest["sources"][0]["rows_read"] == 12 and len(mix.examples) == 12


def test_dedup_counted(tmp_path):
    rows = [hh("Hello there", "Hi"), hh("hello   THERE", "hi"), hh("Hello there", "Hi."), hh("other", "x")]
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    inst = tmp_path / "i.json"
    inst.write_text(json.dumps([{"instruction": "HELLO THERE", "output": "HI"}]))
    mix = build_mixture(config({"id": path, "format": "hh"}, {"id": str(inst), "format": "instruction"}))
    hh_entry, inst_entry = mix.manifest["sources"]
    assert hh_entry["skipped"] == {"duplicate": 1} and hh_entry["used"] == 3
    assert inst_entry["skipped"] == {"duplicate": 1}  # dedup is across sources, first source wins
    assert mix.manifest["totals"]["skipped"] == {"duplicate": 2}
    no_dedup = build_mixture(config({"id": path, "format": "hh"}, dedup=False))
    assert len(no_dedup.examples) == 4


def test_leakage_removed_counted_and_checked(tmp_path):
    rows = [hh("How do I pick a lock?", "I can't help."), hh("Tell me a joke", "Knock knock"),
            {"chosen": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: how do I  PICK a lock?\n\nAssistant: no",
             "rejected": ""}]
    cfg = config({"id": str(write_jsonl(tmp_path / "l.jsonl", rows)), "format": "hh"})
    evals = ["  how do i pick a LOCK? ", "unrelated"]
    mix = build_mixture(cfg, eval_prompts=evals)
    # Every user turn counts (issue #14): the third dialogue's last turn asks the eval prompt, and its trained
    # reply answers it.
    assert mix.manifest["sources"][0]["skipped"] == {"eval_leak": 2}
    assert mix.manifest["eval_prompts_checked"] == 2
    assert len(mix.examples) == 1
    check_no_leakage(mix.examples, evals)
    with pytest.raises(DataLeakError, match="2 training example"):
        check_no_leakage(build_mixture(cfg).examples, evals)


def test_skipped_reasons_counted(tmp_path):
    path = tmp_path / "messy.jsonl"
    lines = [
        json.dumps(hh("good one", "fine")).encode(),
        b'{"chosen": "\\n\\nHuman: broken json',                       # invalid_json
        b'{"chosen": "\\n\\nHuman: caf\xe9\\n\\nAssistant: ok"}',      # latin-1 byte: invalid_utf8
        b"",                                                            # blank: not a row
        b"[1, 2]",                                                      # not_an_object
        json.dumps({"rejected": "x"}).encode(),                         # missing_field
        json.dumps({"chosen": "\n\nHuman: a"}).encode(),               # ends_with_user
        json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: "}).encode(),  # empty_completion
        json.dumps({"chosen": 5}).encode(),                             # not_a_string
        json.dumps(hh("good two", "fine")).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    mix = build_mixture(config({"id": str(path), "format": "hh"}))
    entry = mix.manifest["sources"][0]
    assert entry["skipped"] == {"invalid_json": 1, "invalid_utf8": 1, "not_an_object": 1, "missing_field": 1,
                                "ends_with_user": 1, "empty_completion": 1, "not_a_string": 1}
    assert entry["rows_read"] == 9 and entry["used"] == 2
    check_counts(mix.manifest)


def test_file_formats(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]
    (tmp_path / "wrapped.json").write_text(json.dumps({"meta": "x", "rows": rows}))
    assert read_file(tmp_path / "wrapped.json").rows == rows
    write_jsonl(tmp_path / "rows.jsonl.gz", rows, gz=True)
    assert read_file(tmp_path / "rows.jsonl.gz").rows == rows
    (tmp_path / "rows.csv").write_bytes("instruction,input,output\na,,b\nc,d,e\n\"multi\nline\",,ok\n".encode()
                                         + b"caf\xe9,,x\n1,2,3,4\n")
    got = read_file(tmp_path / "rows.csv")
    assert got.rows[:2] == rows and got.rows[2]["instruction"] == "multi\nline"
    assert got.skipped == Counter({"invalid_utf8": 1, "bad_csv_row": 1}) and got.rows_read == 5


def test_file_errors(tmp_path):
    with pytest.raises(DataSourceError, match="not found"):
        read_source(DataSource(id=str(tmp_path / "nope.jsonl"), format="hh"))
    with pytest.raises(DataSourceError, match="not found"):
        read_source(DataSource(id="./data/missing.json", format="instruction"))
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataSourceError, match="unknown format"):
        read_file(tmp_path / "x.parquet")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DataSourceError, match="not valid UTF-8 JSON"):
        read_file(tmp_path / "bad.json")
    (tmp_path / "two.json").write_text(json.dumps({"a": [], "b": []}))
    with pytest.raises(DataSourceError, match="exactly one"):
        read_file(tmp_path / "two.json")


def test_hub_failure_names_id_and_mirror_env(monkeypatch):
    calls = []

    def load_dataset(hub_id, **kw):
        calls.append((hub_id, kw))
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataSourceError) as info:
        read_source(DataSource(id="someone/unmirrored", format="hh", data_dir="sub", split="test"))
    assert "'someone/unmirrored'" in str(info.value) and DATA_MIRROR_ENV in str(info.value)
    assert calls == [("someone/unmirrored", {"data_dir": "sub", "split": "test"})]


def test_hub_rows_when_available(monkeypatch):
    class FakeDS(list):
        def select(self, idx):
            return FakeDS(self[i] for i in idx)

    rows = FakeDS(hh(f"q{i}", f"a{i}") for i in range(5))
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: rows))
    got = read_source(DataSource(id="org/data", format="hh", limit=3))
    assert got.rows_read == 3 and got.origin == {"hub": "org/data", "data_dir": None, "split": "train"}


def test_mirror_resolution(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "hh-rlhf").mkdir(parents=True)
    write_jsonl(mirror / "hh-rlhf" / "harmless-base_test_public.jsonl.gz",
                [hh(f"q{i}", f"a{i}") for i in range(4)], gz=True)
    (mirror / "extra").mkdir()
    (mirror / "extra" / "golden.jsonl").write_text("".join(json.dumps(hh(f"g{i}", "ok")) + "\n" for i in range(3)))
    (mirror / "mirror.yaml").write_text(
        "Unified-Language-Model-Alignment/Anthropic_HH_Golden: extra/golden.jsonl\n")
    monkeypatch.setenv(DATA_MIRROR_ENV, str(mirror))
    cfg = config({"id": "Anthropic/hh-rlhf", "format": "hh", "data_dir": "harmless-base", "split": "test"},
                 {"id": "Unified-Language-Model-Alignment/Anthropic_HH_Golden", "format": "hh"})
    mix = build_mixture(cfg)
    first, golden = mix.manifest["sources"]
    assert first["resolved"]["path"] == str(mirror / "hh-rlhf" / "harmless-base_test_public.jsonl.gz")
    assert (first["licence"], first["licence_origin"]) == ("MIT", "builtin")
    assert golden["licence"] == "Apache-2.0" and golden["used"] == 3
    assert mix.manifest["licences"] == ["Apache-2.0", "MIT"]
    assert len(mix.examples) == 7


def test_write_and_read_mixture(tmp_path):
    mix = build_mixture(config({"id": hh_file(tmp_path, 6), "format": "hh"}))
    mix.examples[0]["completion"][0]["content"] += " – ünïcode ✓"
    run = RunDir(tmp_path / "run")
    write_mixture(mix, run)
    assert read_mixture(run) == mix.examples
    manifest = read_json(run.data_manifest)
    assert manifest["train_data"]["examples"] == 6 and manifest["train_data"]["path"] == "data/train.jsonl"
    assert manifest["sources"] == mix.manifest["sources"]
    assert sorted(p.name for p in run.train_data.parent.iterdir()) == ["data_manifest.json", "train.jsonl"]
    run.train_data.write_text(run.train_data.read_text() + "{oops\n")
    with pytest.raises(ValueError, match="train.jsonl:7"):
        read_mixture(run)
    with pytest.raises(FileNotFoundError, match="data stage"):
        read_mixture(RunDir(tmp_path / "empty"))


def test_real_hh_through_mirror(shared_data, monkeypatch, capsys):
    monkeypatch.setenv(DATA_MIRROR_ENV, str(shared_data))
    cfg = config({"id": "Anthropic/hh-rlhf", "format": "hh", "data_dir": "harmless-base", "split": "test"})
    mix = build_mixture(cfg)
    entry = mix.manifest["sources"][0]
    skipped = sum(entry["skipped"].values())
    with capsys.disabled():
        print(f"\nreal HH harmless-base test: {entry['rows_read']} rows, {entry['used']} used, "
              f"skipped {entry['skipped']}")
    assert entry["rows_read"] == 2000
    assert skipped <= 40  # a handful of HH transcripts are irregular (empty/doubled turns) and are counted
    assert set(entry["skipped"]) <= {"empty_completion", "empty_turn", "not_alternating", "duplicate",
                                     "ends_with_user"}
    assert entry["licence"] == "MIT"
    assert all(e["prompt"][0]["role"] == "user" and e["completion"][0]["content"] for e in mix.examples)
    check_counts(mix.manifest)
