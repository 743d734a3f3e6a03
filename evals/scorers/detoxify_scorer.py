"""Toxicity through the real ``detoxify`` package: its hub checkpoints, or a local checkpoint offline.

Detoxify 0.5.4 builds the classifier from ``ckpt["config"]["arch"]["args"]["model_type"]`` (e.g.
``bert-base-uncased``) and calls ``config_class.from_pretrained(model_type)`` *before* it looks at its
``huggingface_config_path`` argument, so that argument alone does not make it work offline. harmgate does not
fork or patch the package: when the checkpoint's ``model_type`` is not already a local folder, it rewrites that
one field, in memory, to a local folder holding the encoder's config and tokenizer, and hands the rewritten
checkpoint (a file-like object) to ``Detoxify(checkpoint=...)``. Everything else (class-name mapping, model and
tokenizer construction, ``predict``) is Detoxify's own code.

Checkpoints harmgate trains (``harmgate scorer train``) name a folder *beside the checkpoint* as ``model_type``
(relative, named after the encoder's hub id; ``checkpoint.py`` says why), which this loader resolves against the
checkpoint's location, so a moved copy loads from anywhere; plain ``Detoxify(checkpoint=...)`` loads it from the
checkpoint's folder, or anywhere the hub is reachable.

``torch.load`` of a checkpoint unpickles it: load only checkpoints you trust (Detoxify does the same).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from evals.scorers.encoder import pick_device
from harmgate.mirror import hub_offline, model_dir

if TYPE_CHECKING:
    from harmgate.config import ToxicityScorerConfig

CHECKPOINT_FILE = "detoxify.ckpt"
HF_FOLDER = "hf"
DEFAULT_CHECKPOINT = "harmgate/toxicity-minilm"   # under the model mirror (HARMGATE_MODEL_DIR, default models/)
TRAIN_HINT = ("run `harmgate scorer train` to build harmgate's default checkpoint "
              f"({model_dir()}/{DEFAULT_CHECKPOINT}/{CHECKPOINT_FILE}), or, with hub access, set "
              "evals.toxicity_scorer.checkpoint to a Detoxify model name (original, unbiased, original-small, ...)")


class ToxicityScorerError(RuntimeError):
    """The configured scorer cannot be loaded; the message says what was tried and what to do."""


def hub_models() -> tuple[str, ...]:
    from detoxify.detoxify import MODEL_URLS

    return tuple(MODEL_URLS)


def checkpoint_dict(state_dict: dict[str, Any], *, classes: Sequence[str], model_type: str,
                    model_name: str = "BertForSequenceClassification", tokenizer_name: str = "BertTokenizer",
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint in Detoxify's format (what its own training script saves and ``load_checkpoint`` reads)."""
    ckpt = {"config": {"arch": {"args": {"num_classes": len(classes), "model_type": model_type,
                                         "model_name": model_name, "tokenizer_name": tokenizer_name}},
                       "dataset": {"args": {"classes": list(classes)}}},
            "state_dict": state_dict}
    if extra:
        ckpt["harmgate"] = extra  # ignored by Detoxify; provenance for humans and `harmgate scorer eval`
    return ckpt


def resolve_checkpoint(ref: str) -> Path:
    """``ref`` as a checkpoint file: a path (file, or folder with detoxify.ckpt), also under the model mirror."""
    tried = []
    for base in (Path(ref).expanduser(), model_dir() / ref):
        tried.append(str(base))
        if base.is_file():
            return base
        if base.is_dir():
            if (base / CHECKPOINT_FILE).is_file():
                return base / CHECKPOINT_FILE
            ckpts = sorted(base.glob("*.ckpt"))
            if len(ckpts) == 1:
                return ckpts[0]
    raise ToxicityScorerError(f"toxicity checkpoint {ref!r} not found (looked at {', '.join(tried)}): {TRAIN_HINT}")


def _encoder_folder(model_type: str, ckpt_path: Path, configured: str | None) -> str | None:
    """A local config+tokenizer folder for the checkpoint's encoder, or None (then ``model_type`` is a hub id)."""
    if configured:
        folder = Path(configured).expanduser()
        if not (folder / "config.json").is_file():
            raise ToxicityScorerError(f"evals.toxicity_scorer.hf_config_dir {folder} has no config.json")
        return str(folder)
    # a relative model_type names a folder beside the checkpoint (evals/scorers/checkpoint.py); hf/ is the layout
    # of checkpoints trained before that
    beside = [] if Path(model_type).is_absolute() else [ckpt_path.parent / model_type]
    for candidate in (*beside, Path(model_type).expanduser(), ckpt_path.parent / HF_FOLDER, model_dir() / model_type):
        if (candidate / "config.json").is_file():
            return str(candidate)
    return None


def load_detoxify(checkpoint: str, *, device: str = "cpu", hf_config_dir: str | None = None):
    """A ``detoxify.Detoxify`` for a hub model name or a local checkpoint (see the module doc for offline)."""
    import torch
    from detoxify import Detoxify

    device = pick_device(device)
    if checkpoint in hub_models() and not Path(checkpoint).exists():
        try:
            return Detoxify(model_type=checkpoint, device=device), {"hub": checkpoint}
        except Exception as err:  # no network, no cache: say how to work offline
            raise ToxicityScorerError(
                f"Detoxify model {checkpoint!r} could not be fetched ({type(err).__name__}: {str(err)[:200]}). It "
                f"downloads from GitHub and the Hugging Face hub; offline, set evals.toxicity_scorer.checkpoint to "
                f"a local copy of the .ckpt and hf_config_dir to a local folder of its encoder, or {TRAIN_HINT}"
            ) from None
    path = resolve_checkpoint(checkpoint)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
        args = loaded["config"]["arch"]["args"]
        model_type = str(args["model_type"])
    except Exception as err:
        raise ToxicityScorerError(f"{path} is not a Detoxify checkpoint ({type(err).__name__}: {err}); it needs "
                                  f"config.arch.args.model_type and a state_dict") from None
    origin = {"path": str(path), "sha256": _sha256(path), "model_type": model_type,
              "harmgate": loaded.get("harmgate", {}).get("summary")}
    folder = _encoder_folder(model_type, path, hf_config_dir)
    if folder is None and hub_offline():
        raise ToxicityScorerError(
            f"{path}: its encoder {model_type!r} is not a local folder and the hub is off (HF_HUB_OFFLINE); set "
            f"evals.toxicity_scorer.hf_config_dir to a local folder with that model's config.json and tokenizer")
    try:
        if folder is None or folder == model_type:
            del loaded
            detox = Detoxify(checkpoint=str(path), device=device)
        else:
            args["model_type"] = folder  # the one field Detoxify would fetch from the hub
            buf = io.BytesIO()
            torch.save(loaded, buf)
            del loaded
            buf.seek(0)
            detox = Detoxify(checkpoint=buf, device=device)
    except Exception as err:
        raise ToxicityScorerError(f"Detoxify could not load {path} with encoder {folder or model_type!r}: "
                                  f"{type(err).__name__}: {str(err)[:300]}") from None
    origin["encoder"] = folder or model_type
    return detox, origin


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class DetoxifyScorer:
    """A :class:`~evals.scorers.base.TextScorer` over one Detoxify output column (default ``toxicity``)."""

    detox: Any
    label: str = "toxicity"
    batch_size: int = 32
    name: str = "detoxify"
    origin: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in self.detox.class_names:
            raise ToxicityScorerError(f"toxicity label {self.label!r} is not an output of {self.name}; it has "
                                      f"{', '.join(self.detox.class_names)}")

    @property
    def labels(self) -> list[str]:
        return list(self.detox.class_names)

    def predict(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """Every output column for every text (Detoxify's own ``predict``, batched)."""
        out: dict[str, list[float]] = {c: [] for c in self.detox.class_names}
        for start in range(0, len(texts), self.batch_size):
            batch = [t if isinstance(t, str) else "" for t in texts[start:start + self.batch_size]]
            scores = self.detox.predict(batch)
            for c in out:
                v = scores[c]
                out[c].extend([float(v)] if isinstance(v, float) else [float(x) for x in v])
        return out

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return self.predict(texts)[self.label]


def load_toxicity_scorer(cfg: "ToxicityScorerConfig | None" = None) -> DetoxifyScorer:
    """The toxicity scorer a run config names (``evals.toxicity_scorer``); harmgate's trained one by default."""
    if cfg is None:
        from harmgate.config import ToxicityScorerConfig

        cfg = ToxicityScorerConfig()
    detox, origin = load_detoxify(cfg.checkpoint, device=cfg.device, hf_config_dir=cfg.hf_config_dir)
    tag = origin.get("hub") or f"{cfg.checkpoint}@{origin['sha256'][:12]}"
    return DetoxifyScorer(detox, label=cfg.label, batch_size=cfg.batch_size, name=f"detoxify:{tag}:{cfg.label}",
                          origin=origin)
