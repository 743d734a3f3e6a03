"""bench/train_throughput.py end to end on the CPU with the tiny shape: every mode's machinery, not its speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from bench.synthetic import FIRST_WORD_ID, SHAPES, build_tokenizer, sample_lengths, token_examples
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "train_throughput.py"


def test_llama_8b_shape_has_8b_parameters():
    assert SHAPES["llama-3.1-8b"].n_params() == 8_030_261_248  # meta-llama/Llama-3.1-8B's parameter count


def test_synthetic_lengths_and_examples_look_like_chat_sft_data():
    lengths = sample_lengths(4000, seed=1)
    assert min(lengths) >= 32 and max(lengths) <= 1024
    median = sorted(lengths)[len(lengths) // 2]
    assert 220 <= median <= 270  # e^5.5 ~ 245
    ex = token_examples([40, 100], vocab_size=1024)
    assert [len(e["input_ids"]) for e in ex] == [40, 100]
    assert ex[0]["completion_mask"] == [0] * 12 + [1] * 28
    assert all(FIRST_WORD_ID <= t < 1024 for e in ex for t in e["input_ids"])


def test_synthetic_tokenizer_decodes_every_id_and_renders_chat():
    tok = build_tokenizer(1024)
    assert len(tok) == 1024 and tok.pad_token_id == 0 and tok.eos_token == "<|im_end|>"
    assert tok.decode([5, 1023]) == "w5 w1023"
    text = tok.apply_chat_template([{"role": "user", "content": "w7 w8"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_git_commit_is_none_for_a_copy_inside_another_checkout(tmp_path):
    # The GPU runs unpack a `git archive` inside a checkout: its commit is not the enclosing repository's HEAD.
    from bench.train_throughput import git_commit

    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(tmp_path)], check=True)
    subprocess.run(git + ["-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "archive").mkdir()
    assert git_commit(tmp_path) == head
    assert git_commit(tmp_path / "archive") is None


def _run(tmp_path, *args):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--warmup", "1", "--steps", "2",
                           "--out", str(out), "--work-dir", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_compare_mode_records_every_point_errors_included_and_reuses_the_model_cleanly(tmp_path):
    # batch 0 is invalid: it must be recorded as an error and the sweep must go on. Two identical points in one
    # worker must train identically: the second runs on the model the first one gave back (LoRA unloaded, TRL's
    # forward patch removed), so any leftover would change its losses.
    report, stdout = _run(tmp_path, "--configs", "harmgate,trl_defaults", "--batch-sizes", "0,2,2",
                          "--eval-gen", "--gen-prompts", "4", "--gen-single-prompts", "2", "--gen-batch", "4",
                          "--gen-max-new-tokens", "4")
    assert report["shape"] == "tiny" and report["n_params"] == SHAPES["tiny"].n_params()
    by = {}
    for r in report["runs"]:
        by.setdefault(r["config"], []).append(r)
    assert [r["config"] for r in report["runs"]] == ["trl_defaults"] * 3 + ["harmgate"] * 3  # table order
    for name, rows in by.items():
        assert rows[0]["status"] == "error" and "per_device_batch_size" in rows[0]["error"]
        first, again = rows[1], rows[2]
        assert first["status"] == again["status"] == "ok"
        assert first["losses"] == again["losses"], f"{name}: model reuse changed training"
        assert first["tokens_per_s"] > 0 and len(first["steps"]) == 3
    # packed rows carry ~3x the real tokens of two padded samples, and only real tokens are counted
    assert by["harmgate"][1]["tokens_per_step_median"] > 2 * by["trl_defaults"][1]["tokens_per_step_median"]
    assert by["trl_defaults"][1]["tokens_per_step_median"] <= 2 * 1024
    assert by["harmgate"][1]["liger"] is False  # no Triton on a CPU: switched off and said so
    assert report["best"]["harmgate"]["batch_size"] == 2
    gen = report["eval_generation"]
    assert [r["mode"] for r in gen["runs"]] == ["batched", "one at a time"] and gen["speedup"] > 0
    assert "QLoRA training throughput" in stdout and (tmp_path / "bench.log").is_file()


@pytest.mark.slow
def test_ablation_mode_runs_each_lever_in_its_group(tmp_path):
    report, _ = _run(tmp_path, "--mode", "ablation", "--ablation-batch", "1", "--skip-compile")
    labels = [r["label"] for r in report["runs"]]
    assert labels[0] == "harmgate (all levers)" and "- packing (padded samples, 3x batch)" in labels
    statuses = {r["label"]: r["status"] for r in report["runs"]}
    assert statuses["harmgate (all levers)"] == "ok" and statuses["- rows layout (TRL's flat row)"] == "ok"
    assert report["ablation"]["harmgate (all levers)"]["vs_all_levers"] == 1.0


@pytest.mark.slow
def test_loss_curves_packed_vs_unpacked_on_hh_data(tmp_path, tiny_model_dir, shared_data):
    """bench/loss_curves.py on the tiny model and real HH rows: three runs, one held-out set, JSON (+ PNG)."""
    import os

    out = tmp_path / "lc.json"
    env = {**os.environ, "HARMGATE_DATA_MIRROR": str(shared_data)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "loss_curves.py"), "--model", str(tiny_model_dir),
                           "--examples", "120", "--batch", "8", "--max-length", "256", "--max-steps", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert set(runs) == {"unpacked", "packed", "unpacked, seed+1"}
    assert runs["packed"]["packing"] == "padding_free" and runs["unpacked"]["packing"] == "none"
    # one held-out set for all: the same examples and completion tokens are scored
    assert len({(r["heldout"]["tokens"], r["heldout"]["examples"]) for r in runs.values()}) == 1
    assert runs["unpacked"]["heldout"]["tokens"] > 0
    for r in runs.values():
        assert r["curve"] and all(math.isfinite(p["loss"]) for p in r["curve"])
        assert [p["tokens"] for p in r["curve"]] == sorted(p["tokens"] for p in r["curve"])
    # packed rows carry more samples per step, so the packed run uses fewer rows per step
    assert runs["packed"]["batch"] < runs["unpacked"]["batch"]
    assert "heldout_packed_minus_unpacked" in report["comparison"] and "heldout_seed_noise" in report["comparison"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert report["png"] is None
    else:
        assert report["png"] and out.with_suffix(".png").stat().st_size > 10_000
