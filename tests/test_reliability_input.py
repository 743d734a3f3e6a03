"""Bad input to the pipeline: malformed config files and dataset rows with wrong roles, empty turns, huge turns and
invalid UTF-8. A config is either loaded or refused with a ConfigError naming the file (never another exception,
never a traceback from the CLI); a row is either an example or skipped and counted under a reason code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from align.mixture import build_mixture, row_to_example
from align.transcripts import RowError
from harmgate.config import ConfigError, DataConfig, DataSource, load_config
from tests.test_config import MINIMAL

REPO = Path(__file__).resolve().parent.parent
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=10)


# -- configs ----------------------------------------------------------------------------------------------------
def _load(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as err:
        assert str(path) in str(err), f"the error must name the file: {err}"


@given(raw=st.binary(max_size=400))
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_config_from_arbitrary_bytes_is_loaded_or_refused(tmp_path, raw):
    _load(tmp_path, raw)


def _mutations():
    """MINIMAL with one value anywhere replaced by arbitrary JSON, or one key added at any depth."""
    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, (*prefix, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from paths(v, (*prefix, i))
    return st.tuples(st.sampled_from(list(paths(MINIMAL))[1:]), JSON, st.booleans())


@given(mutation=_mutations())
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_config_with_a_wrong_value_anywhere_is_refused_with_its_path(tmp_path, mutation):
    import copy

    path, value, add_key = mutation
    data = copy.deepcopy(MINIMAL)
    node = data
    for part in path[:-1]:
        node = node[part]
    if add_key and isinstance(node[path[-1]], dict):
        node[path[-1]]["unexpected_key"] = value
    else:
        node[path[-1]] = value
    _load(tmp_path, yaml.safe_dump(data, allow_unicode=True).encode())


@pytest.mark.parametrize("raw", [
    b"\xff\xfe\x00name: x\n",                      # not UTF-8
    b"name: [unclosed\n",                           # not YAML
    b"- a list\n- not a mapping\n",
    b"",                                            # empty
    b"name: x\ninclude: missing.yaml\n",
    b"name: x\ninclude: [1, 2]\n",
    b"&a [*a]\n",                                   # a self-referencing YAML anchor
    b"name: " + b"[" * 5000 + b"]" * 5000 + b"\n",  # deep nesting
])
def test_malformed_config_files_are_refused_cleanly(tmp_path, raw):
    with pytest.raises(ConfigError):
        _load_strict(tmp_path, raw)


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00name: x\n", b"name: [unclosed\n"])
def test_the_cli_refuses_a_malformed_config_in_one_line(tmp_path, raw):
    """Exit status 2, one error line naming the file, no traceback."""
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(raw)
    done = subprocess.run([sys.executable, "-m", "harmgate", "data", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "error:" in done.stdout and str(path.name) in done.stdout


def _load_strict(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(data)
    load_config(path)


# -- dataset rows -------------------------------------------------------------------------------------------------
HH = DataSource(id="hh", format="hh")
INSTRUCTION = DataSource(id="inst", format="instruction")


@given(row=JSON, source=st.sampled_from([HH, INSTRUCTION]))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_row_is_an_example_or_a_counted_skip(row, source):
    if not isinstance(row, dict):
        return  # the readers count non-objects before rows reach row_to_example
    try:
        ex = row_to_example(row, source)
    except RowError as err:
        assert err.reason and err.reason.replace("_", "").isalpha()
        return
    assert ex["completion"][-1]["role"] == "assistant" and ex["completion"][-1]["content"].strip()
    assert all(m["content"].strip() for m in ex["prompt"])


def test_bad_rows_in_a_file_are_skipped_by_reason(tmp_path):
    good = {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt."}
    huge = "word " * 200_000  # a 1 MB turn: kept (training truncates to max_seq_length), never a crash
    rows = [
        json.dumps(good).encode(),
        json.dumps({"chosen": "\n\nAssistant: I start.\n\nHuman: Wrong order."}).encode(),       # wrong roles
        json.dumps({"chosen": "\n\nHuman: Hi\n\nHuman: again\n\nAssistant: ok"}).encode(),    # not alternating
        json.dumps({"chosen": "\n\nHuman:   \n\nAssistant: an answer"}).encode(),             # empty turn
        json.dumps({"chosen": "\n\nHuman: Hi\n\nAssistant:   "}).encode(),                    # empty reply
        json.dumps({"chosen": f"\n\nHuman: {huge}\n\nAssistant: short"}).encode(),            # huge turn
        b'{"chosen": "\\n\\nHuman: caf\xe9\\n\\nAssistant: latin-1 bytes"}',                  # invalid UTF-8
        b'{"chosen": "truncated',                                                               # invalid JSON
        json.dumps([1, 2]).encode(),                                                           # not an object
        json.dumps({"rejected": "no chosen field"}).encode(),
    ]
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    data = DataConfig(sources=[{"id": str(tmp_path / "rows.jsonl"), "format": "hh"}], dedup=False)
    mixture = build_mixture(data)
    [entry] = mixture.manifest["sources"]
    assert entry["rows_read"] == len(rows) and entry["usable"] == 2
    assert entry["skipped"] == {"starts_with_assistant": 1, "not_alternating": 1, "empty_turn": 1,
                                "empty_completion": 1, "invalid_utf8": 1, "invalid_json": 1, "not_an_object": 1,
                                "missing_field": 1}


@pytest.mark.slow
def test_training_on_only_huge_turns_fails_with_a_clear_reason(tmp_path, tiny_model_dir):
    """TRL drops examples whose reply a huge prompt pushes past max_seq_length; with none left, say why."""
    from align.train import train
    from harmgate.config import parse_config
    from harmgate.rundir import create_run_dir

    cfg = yaml.safe_load((REPO / "configs" / "tiny-test.yaml").read_text())
    cfg["model"]["base"] = str(tiny_model_dir)
    cfg["training"].update(max_steps=1, max_seq_length=64)
    config = parse_config(cfg)
    run = create_run_dir(config, tmp_path / "run")
    run.train_data.parent.mkdir(parents=True, exist_ok=True)
    with run.train_data.open("w") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": [{"role": "user", "content": "word " * 2000 + str(i)}],
                                "completion": [{"role": "assistant", "content": "ok"}], "source": "t"}) + "\n")
    with pytest.raises(ValueError, match=r"none of the 4 training examples fits training.max_seq_length=64"):
        train(run, config)
    assert not run.adapter_dir.exists() and not run.train_metrics.exists()
