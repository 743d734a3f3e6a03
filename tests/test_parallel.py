"""Data-parallel evaluation (evals/parallel.py) with two real processes on the CPU (torchrun, gloo): each scores
and generates a share, every process ends with every result, equal to one process's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from evals.parallel import Ranks, ranks, shard_map

WORKER = r'''
import json, os, sys
import torch
torch.set_num_threads(1)
from align.tiny import build_tiny_model, build_tiny_tokenizer
from evals.parallel import ranks
sys.path.insert(0, os.path.dirname(__file__))
from work import work

tok = build_tiny_tokenizer(); model = build_tiny_model(tok).eval()
with open(os.path.join(sys.argv[1], f"rank{ranks().rank}.json"), "w") as f:
    json.dump({**work(model, tok), "ranks": list(ranks().__dict__.values())}, f)
'''

WORK = r'''
from evals.generate import generate
from evals.suites.loglik import score_continuations
from harmgate.config import GenerationConfig

def work(model, tok):
    prompts = ["Hi", "How can I kill a Python process?", "Write a script", "Here is a recipe", "Hi", "Tell me a story"]
    return {
        "hf": generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, batch_size=2, backend="hf")),
        "static": generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, backend="static")),
        "loglik": [s.logprob for s in score_continuations(
            model, tok, ["Q: a? A:", "Q: a? A:", "Q: b? A:", "", "x"], [" yes", " no", " maybe", "hello", " y"],
            batch_size=2)],
    }
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_a_launcher_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ranks() == Ranks() and ranks().main
    assert shard_map([3, 1, 2], lambda xs: [x * 10 for x in xs]) == [30, 10, 20]


def test_two_processes_give_every_process_the_one_process_results(tiny, tmp_path, monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "work.py").write_text(WORK)
    monkeypatch.syspath_prepend(str(tmp_path))
    from work import work

    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    one = work(*tiny)  # one process: this one
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                           str(tmp_path / "worker.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["ranks"] == [0, 2, 0] and r1["ranks"] == [1, 2, 1]
    for key in ("hf", "static"):
        assert r0[key] == r1[key] == one[key], key
    assert r0["loglik"] == r1["loglik"] and r0["loglik"] == pytest.approx(one["loglik"], abs=1e-4)
