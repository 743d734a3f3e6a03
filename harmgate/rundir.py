"""The run directory: the one place every stage reads its inputs from and writes its artifacts to.

Layout (docs/ARCHITECTURE.md describes each artifact's schema):

    runs/<name>-<UTC timestamp>/
      config.yaml                 frozen copy of the run config           (harmgate.rundir)
      data/train.jsonl            the training mixture, one example a line (align.mixture)
      data/data_manifest.json     per-source counts, skips, licences        (align.mixture)
      train/adapter/              LoRA adapter (peft)                        (align.train)
      train/train_metrics.json    loss curve, tokens, wall time, memory     (align.train)
      model/                      merged HF model folder (safetensors)       (align.merge)
      evals/<arm>/<suite>.json    generations + metrics, arm = base|tuned    (evals.runner)
      evals/summary.json          metrics per arm and suite                  (evals.runner)
      verdict.json                KPI results                                (gates.verdict)
      publish.json                where the model went in the registry       (gates.publish)
      publish.pending.json        the version an unfinished publish resumes  (gates.publish)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harmgate.config import RunConfig, dump_config, load_config

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def train_data(self) -> Path:
        return self.root / "data" / "train.jsonl"

    @property
    def data_manifest(self) -> Path:
        return self.root / "data" / "data_manifest.json"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "train" / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "train" / "checkpoints"

    @property
    def train_metrics(self) -> Path:
        return self.root / "train" / "train_metrics.json"

    @property
    def merged_model_dir(self) -> Path:
        return self.root / "model"

    def eval_result(self, arm: str, suite: str) -> Path:
        return self.root / "evals" / arm / f"{suite}.json"

    @property
    def eval_summary(self) -> Path:
        return self.root / "evals" / "summary.json"

    @property
    def verdict(self) -> Path:
        return self.root / "verdict.json"

    @property
    def publish_record(self) -> Path:
        return self.root / "publish.json"

    @property
    def publish_pending(self) -> Path:
        """The version a publish is writing; kept until it is approved, so a rerun resumes that version."""
        return self.root / "publish.pending.json"

    def config(self) -> RunConfig:
        return load_config(self.config_path)


def create_run_dir(config: RunConfig, root: str | Path | None = None) -> RunDir:
    """A fresh run directory holding a frozen copy of ``config``."""
    if root is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        root = Path(config.runs_dir) / f"{config.name}-{stamp}"
    run = RunDir(Path(root))
    run.root.mkdir(parents=True, exist_ok=True)
    if run.config_path.exists():
        raise FileExistsError(f"{run.root} already holds a run; pass another --run-dir or reuse it stage by stage")
    write_text_atomic(run.config_path, dump_config(config))
    return run


def open_run_dir(path: str | Path) -> RunDir:
    run = RunDir(Path(path))
    if not run.config_path.is_file():
        raise FileNotFoundError(f"{run.root} is not a run directory: it has no {CONFIG_FILE}")
    return run


def latest_run_dir(runs_dir: str | Path = "runs") -> RunDir:
    runs = Path(runs_dir)
    candidates = sorted((p for p in runs.glob("*/") if (p / CONFIG_FILE).is_file()), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no run directory under {runs}/ (run `harmgate run CONFIG` first)")
    return RunDir(candidates[-1])


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the finished folder ``tmp`` at ``dest``. An older ``dest`` is renamed aside before it is deleted, so a
    kill at any moment leaves either the old folder whole, nothing, or the new one whole at ``dest``, never a
    half-deleted old one carrying the final name."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"missing artifact {path}: run the stage that writes it first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"artifact {path} is not valid JSON ({err}); rerun the stage that writes it") from None
