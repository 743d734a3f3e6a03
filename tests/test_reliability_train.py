"""Training killed mid-run (SIGKILL, the real CLI in its own process): nothing half-written looks complete, and a
rerun resumes from the last complete checkpoint, also when the kill hit while a checkpoint was being saved."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MAX_STEPS, SAVE_STEPS = 12, 2

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, shared_data: Path, tiny_model_dir: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "tiny-test.yaml").read_text())
    cfg.update(name="killed-train", runs_dir=str(tmp_path / "runs"))
    cfg["model"]["base"] = str(tiny_model_dir)
    cfg["data"]["mirror"] = str(shared_data)
    cfg["training"].update(max_steps=MAX_STEPS, save_steps=SAVE_STEPS)
    path = tmp_path / "killed-train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _complete_checkpoints(run: Path) -> list[int]:
    return sorted(int(d.name.split("-")[1]) for d in (run / "train" / "checkpoints").glob("checkpoint-*")
                  if (d / "trainer_state.json").is_file())


def test_training_killed_mid_run_resumes_from_its_last_checkpoint(tmp_path, shared_data, tiny_model_dir):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harmgate", "train", str(_config(tmp_path, shared_data,
                                 tiny_model_dir)), "--run-dir", str(run)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while not (run / "train" / "checkpoints").is_dir() or not _complete_checkpoints(run):
            assert proc.poll() is None, f"training ended before its first checkpoint:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no checkpoint after 300 s:\n{log.read_text()}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    done = _complete_checkpoints(run)
    assert done and done[-1] < MAX_STEPS, f"killed too late to test a resume (checkpoints {done})"
    # Nothing of the unfinished run carries a final name: no adapter, no merged model, no metrics.
    assert not (run / "train" / "adapter").exists() and not (run / "model").exists()
    assert not (run / "train" / "train_metrics.json").exists()

    # As if the kill had also hit while the next checkpoint was being saved: weights there, trainer state not.
    last = run / "train" / "checkpoints" / f"checkpoint-{done[-1]}"
    torn = last.with_name(f"checkpoint-{done[-1] + SAVE_STEPS}")
    shutil.rmtree(torn, ignore_errors=True)
    torn.mkdir()
    shutil.copy(last / "adapter_model.safetensors", torn / "adapter_model.safetensors")
    (torn / "trainer_state.json").write_text('{"global_step": ')  # torn mid-write

    second = subprocess.run([sys.executable, "-m", "harmgate", "train", str(run)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"deleting incomplete checkpoint {torn}" in second.stdout + second.stderr

    metrics = json.loads((run / "train" / "train_metrics.json").read_text())
    assert metrics["resumed_from"] == str(last), "resumed from the last complete checkpoint"
    assert metrics["global_steps"] == MAX_STEPS
    steps = [p["step"] for p in metrics["loss_curve"]]  # the checkpoint's history, then the resumed steps
    assert steps == sorted(set(steps)) and steps[-1] == MAX_STEPS, steps
    assert (run / "train" / "adapter" / "adapter_config.json").is_file()
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "harmgate_merge.json").is_file()
    assert not list(run.rglob("*.partial")), "temporary folders are renamed or removed"

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "model")  # the merged model is whole


def test_a_kill_while_replacing_a_model_folder_never_leaves_half_of_one(tmp_path, monkeypatch):
    """Rerunning train/merge over a finished run replaces adapter/ and model/: a kill while the old folder is being
    deleted (simulated: rmtree stops after one file) must leave the new folder whole under the final name."""
    from harmgate import rundir

    dest, new = tmp_path / "model", tmp_path / ".model.partial"
    for folder, text in ((dest, "old"), (new, "new")):
        folder.mkdir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (folder / name).write_text(text)
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        first = sorted(Path(path).iterdir())[0]
        first.unlink()
        raise KeyboardInterrupt("SIGKILL stand-in")

    monkeypatch.setattr(rundir.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        rundir.replace_dir(new, dest)
    monkeypatch.setattr(rundir.shutil, "rmtree", real_rmtree)
    assert {p.name: p.read_text() for p in dest.iterdir()} == {
        "config.json": "new", "model.safetensors": "new", "tokenizer.json": "new"}
    assert not new.exists() and (tmp_path / ".model.old").exists(), "only the hidden old copy is half deleted"

    newer = tmp_path / ".model.partial"
    newer.mkdir()
    (newer / "config.json").write_text("newer")
    rundir.replace_dir(newer, dest)  # the rerun clears the leftover first
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (dest / "config.json").read_text() == "newer"


@pytest.mark.parametrize("full_finetune", [False, True], ids=["lora-4bit", "full"])
def test_a_rerun_of_finished_training_does_not_train_again(tmp_path, tiny_model_dir, full_finetune):
    """A later stage failed and `harmgate train` runs again: the finished checkpoint is restored, not resumed
    (transformers resumed at max_steps mid-epoch trains one step more), so the steps and weights stay the first
    run's."""
    from safetensors.torch import load_file

    from align.mixture import build_mixture, write_mixture
    from align.train import train
    from harmgate.rundir import create_run_dir
    from tests.tiny_runs import tiny_run_config

    # 40 rows, 10 steps an epoch: max_steps 2 ends mid-epoch
    config = tiny_run_config(tmp_path, tiny_model_dir, "sft", rows=40,
                             quantization={"load_in_4bit": not full_finetune},
                             training={"save_steps": 50, "logging_steps": 5, "full_finetune": full_finetune})
    run = create_run_dir(config, tmp_path / "run")
    write_mixture(build_mixture(config.data), run)

    def weights():
        return {k: v.clone() for f in run.adapter_dir.glob("*.safetensors") for k, v in load_file(f).items()}

    first = train(run, config)
    first_weights = weights()
    again = train(run, config)
    assert first["global_steps"] == again["global_steps"] == 2
    assert again["resumed_from"].endswith("checkpoint-2")
    assert all(v.equal(first_weights[k]) for k, v in weights().items())
