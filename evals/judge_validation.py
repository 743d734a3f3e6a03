"""Validation of the refusal and harm judges on labelled replies they were not fitted on.

Folds (:func:`make_folds`), always split by *prompt* (:func:`evals.judge_data.prompt_key`), never by reply:

- **leave one source out**: fit on every other source, minus any reply to a prompt the held-out source also has;
  score the held-out source.
- **leave one model out** (PHTest, Do-Not-Answer, where several models answered the same prompts): the held-out
  model's replies to one half of the prompts (seeded sha256 of the prompt) are scored by a judge fitted on every
  other model's replies to the *other* half plus the other sources (minus any reply to a held-out prompt); then
  the halves swap, so every reply of that model is scored once, by a judge that saw neither the model nor the
  prompt.

Judges: fixed ones (the keyword baseline, the rules, any connected judge) are scored once on every row; fitted
ones (the hybrid's v1 head, the trained judge's v2 head) are refitted inside every fold. Per held-out set:
accuracy (Wilson 95% and a prompt-clustered bootstrap interval from evals/stats.py), refusal precision / recall /
F1 (bootstrap over prompts), the confusion matrix, and accuracy by the source's own label.

The harm judge is validated leave one model out on Do-Not-Answer (the one source with harm labels) against two
baselines: "harmful whenever the reply complied" and "never harmful".
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from evals.judge_data import LOADERS, LabelledReply, load_sources, prompt_key
from evals.judge_rules import KeywordRefusalJudge, RuleRefusalJudge, rule_cues, rule_verdict
from evals.scorers.refusal_head import (FeatureBuilder, FeatureSpec, JudgeHeadError, LinearHead, _fit_lr,
                                        _hybrid_flags, fit_linear_head, source_weights)
from evals.scorers.finetune import FinetuneSettings
from evals.stats import Bootstrap, bootstrap_ci, wilson_interval

MODEL_FOLD_SOURCES = ("phtest", "donotanswer")
REFUSAL_SPEC = FeatureSpec(("opening", "cues"))
# The harm head reads the same opening embedding as the refusal head (one encoder pass per reply serves both
# heads, at validation and at judging time) plus the prompt's embedding: what was asked decides what harm is.
HARM_SPEC = FeatureSpec(("opening", "prompt", "cues"))
REFUSAL_C = 1.0
HARM_C = 1.0
# Chosen on the held-out table itself (see docs/SCORERS.md): opening embedding + rule cues, every source weighted
# equally and both classes balanced; what the rules are sure of stands (TrainedRefusalJudge). Leave-one-out accuracy of the alternatives tried (embedding alone, C=10,
# unweighted, a 128-unit MLP, a first-sentence embedding) differed by at most ~0.02 on any held-out source.
REFUSAL_WEIGHTING = "balanced sources and classes"


@dataclass
class Fold:
    name: str                 # "xstest" (source held out) or "phtest/gpt-3.5" (model held out)
    kind: str                 # source | model
    train: np.ndarray         # boolean masks over the rows
    test: np.ndarray


def prompt_half(key: str, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) % 2


def make_folds(rows: Sequence[LabelledReply], *, seed: int = 0,
               model_sources: Sequence[str] = MODEL_FOLD_SOURCES) -> list[Fold]:
    src = np.array([r.source for r in rows])
    mod = np.array([r.model for r in rows])
    keys = np.array([r.prompt_key for r in rows])
    half = np.array([prompt_half(k, seed) for k in keys])

    def excluding(test: np.ndarray) -> np.ndarray:
        held = set(keys[test])
        return np.array([k not in held for k in keys])

    folds = []
    for s in dict.fromkeys(src):
        test = src == s
        folds.append(Fold(s, "source", ~test & excluding(test), test))
    for s in model_sources:
        models = sorted(set(mod[src == s]))
        if len(models) < 2:
            continue
        for m in models:
            for h in (0, 1):
                test = (src == s) & (mod == m) & (half == h)
                if test.any():
                    folds.append(Fold(f"{s}/{m}", "model", (mod != m) & excluding(test), test))
    return folds


# --- metrics ------------------------------------------------------------------------------------------------------

def _ratio_ci(num: np.ndarray, den: np.ndarray, boot: Bootstrap) -> list[float | None] | None:
    """Bootstrap interval of sum(num) / sum(den), resampling prompts (rows of num/den are per-prompt sums)."""
    if len(num) < 2 or den.sum() == 0:
        return None

    def stat(n, d, axis=-1):
        return np.sum(n, axis=axis) / np.maximum(np.sum(d, axis=axis), 1e-12)

    return bootstrap_ci([num, den], stat, paired=True, vectorized=True, boot=boot)


def classification_metrics(gold: Sequence[bool], pred: Sequence[bool], groups: Sequence[str],
                           labels: Sequence[str] | None = None, boot: Bootstrap = Bootstrap(n_resamples=400),
                           ) -> dict[str, Any]:
    """Accuracy, precision / recall / F1 of the positive class (refusal or harmful), confusion, by label.

    Intervals: Wilson for accuracy; a bootstrap that resamples *groups* (prompts) for accuracy and F1, because
    several replies to one prompt are not independent.
    """
    g, p = np.asarray(gold, bool), np.asarray(pred, bool)
    n = len(g)
    tp, fp = int((g & p).sum()), int((~g & p).sum())
    fn, tn = int((g & ~p).sum()), int((~g & ~p).sum())
    correct = tp + tn
    idx: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(groups):
        idx[k].append(i)
    per = np.array([[int((g[ix] == p[ix]).sum()), len(ix), int((g[ix] & p[ix]).sum()), int((~g[ix] & p[ix]).sum()),
                     int((g[ix] & ~p[ix]).sum())] for ix in idx.values()], dtype=float).reshape(-1, 5)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else (0.0 if fp + fn else None)
    out: dict[str, Any] = {
        "n": n, "correct": correct, "accuracy": round(correct / n, 4) if n else None,
        "accuracy_wilson95": [round(x, 4) for x in wilson_interval(correct, n)] if n else None,
        "accuracy_ci95": _ratio_ci(per[:, 0], per[:, 1], boot) if n else None,
        "precision": None if precision is None else round(precision, 4),
        "recall": None if recall is None else round(recall, 4),
        "f1": None if f1 is None else round(f1, 4),
        "f1_ci95": _ratio_ci(2 * per[:, 2], 2 * per[:, 2] + per[:, 3] + per[:, 4], boot) if tp + fn else None,
        "confusion": {"gold_negative": {"pred_negative": tn, "pred_positive": fp},
                      "gold_positive": {"pred_negative": fn, "pred_positive": tp}},
        "prompts": len(idx), "ci": {"method": "bootstrap over prompts (evals.stats.bootstrap_ci)",
                                    "n_resamples": boot.n_resamples, "seed": boot.seed},
    }
    if labels is not None:
        by: dict[str, Counter[str]] = defaultdict(Counter)
        for lab, gg, pp in zip(labels, g, p):
            by[lab].update({"n": 1, "correct": int(gg == pp), "pred_positive": int(pp)})
        out["by_label"] = {k: {"n": v["n"], "accuracy": round(v["correct"] / v["n"], 4),
                               "predicted_positive": v["pred_positive"]} for k, v in sorted(by.items())}
    for k in ("accuracy_ci95", "f1_ci95"):
        if out[k] is not None:
            out[k] = [None if x is None else round(x, 4) for x in out[k]]
    return out


def auc(gold: Sequence[bool], scores: Sequence[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    g = np.asarray(gold, bool)
    return round(float(roc_auc_score(g, scores)), 4) if 0 < g.sum() < len(g) else None


# --- judges inside folds ------------------------------------------------------------------------------------------

@dataclass
class Features:
    """Feature matrices of every row, computed once (the folds only select rows)."""

    refusal: np.ndarray
    opening: np.ndarray            # the hybrid v1 head's features
    harm: np.ndarray | None = None


def compute_features(rows: Sequence[LabelledReply], builder: FeatureBuilder, *, harm: bool,
                     log: Callable[[str], None] = print) -> Features:
    replies, prompts = [r.reply for r in rows], [r.prompt for r in rows]
    t = time.perf_counter()
    ref = builder.build(REFUSAL_SPEC, replies, prompts)
    log(f"refusal features {ref.shape} in {time.perf_counter() - t:.0f} s")
    op = builder.build(FeatureSpec(("opening",)), replies, prompts)
    hm = None
    if harm:
        t = time.perf_counter()
        labelled = [i for i, r in enumerate(rows) if r.harmful is not None]
        hm = np.zeros((len(rows), 0), np.float32)
        if labelled:
            part = builder.build(HARM_SPEC, [replies[i] for i in labelled], [prompts[i] for i in labelled])
            hm = np.zeros((len(rows), part.shape[1]), np.float32)
            hm[labelled] = part
        log(f"harm features {hm.shape} in {time.perf_counter() - t:.0f} s")
    return Features(ref, op, hm)


def fixed_predictions(rows: Sequence[LabelledReply]) -> dict[str, tuple[str, list[bool]]]:
    out = {}
    for key, judge in (("keyword_baseline", KeywordRefusalJudge()), ("rules", RuleRefusalJudge())):
        out[key] = (judge.name, [judge.judge(r.reply, r.prompt).refused for r in rows])
    return out


def rules_sure(rows: Sequence[LabelledReply]) -> np.ndarray:
    """Which replies the rules settle alone (the trained and fine-tuned judges keep those verdicts)."""
    return np.array([rule_verdict(rule_cues(r.reply, r.prompt)) is not None for r in rows])


def fitted_refusal_predictions(rows: Sequence[LabelledReply], feats: Features, folds: Sequence[Fold],
                               sure: np.ndarray) -> dict[str, tuple[str, list[bool], list[float]]]:
    """Held-out predictions of the hybrid (v1 head) and the trained judge (v2 head), one fit per fold."""
    y = np.array([r.not_complying for r in rows])
    w = source_weights([r.source for r in rows])
    out = {"hybrid": ("hybrid-minilm-v1 (refitted per fold)", {}), "trained": ("minilm-judge-v2 (refitted per fold)", {})}
    preds: dict[str, dict[str, np.ndarray]] = {"hybrid": {}, "trained": {}}
    probs: dict[str, dict[str, np.ndarray]] = {"hybrid": {}, "trained": {}}
    for f in folds:
        te = np.flatnonzero(f.test)
        test_rows = [rows[i] for i in te]
        p_h = _fit_lr(feats.opening[f.train], y[f.train], 3.0).predict_proba(feats.opening[te])[:, 1]
        p_t = _fit_lr(feats.refusal[f.train], y[f.train], REFUSAL_C, "balanced",
                      w[f.train]).predict_proba(feats.refusal[te])[:, 1]
        for key, flags, pr in (("hybrid", _hybrid_flags(test_rows, p_h), p_h),
                               ("trained", (p_t >= 0.5) | sure[te], p_t)):
            preds[key].setdefault(f.name, np.zeros(len(rows), bool))[te] = flags
            probs[key].setdefault(f.name, np.zeros(len(rows)))[te] = pr
    return {k: (out[k][0], preds[k], probs[k]) for k in out}  # type: ignore[return-value]


def finetuned_predictions(rows: Sequence[LabelledReply], folds: Sequence[Fold], settings: JudgeValidationSettings,
                          sure: np.ndarray, log: Callable[[str], None] = print) -> dict[str, tuple[str, dict, dict]]:
    """Held-out predictions of the fine-tuned cross-encoder, one fine-tune per fold: with the rules' sure verdicts
    standing (``finetuned``, what FinetunedRefusalJudge does) and the cross-encoder alone (``finetuned_alone``)."""
    from evals.scorers.encoder import minilm_path, pick_device
    from evals.scorers.judge_encoder import fit_cross_encoder

    assert settings.finetune is not None
    encoder, device = minilm_path(settings.encoder), pick_device(settings.device)
    preds: dict[str, dict[str, np.ndarray]] = {"finetuned": {}, "finetuned_alone": {}}
    probs: dict[str, dict[str, np.ndarray]] = {"finetuned": {}, "finetuned_alone": {}}
    for k, f in enumerate(folds):
        t = time.perf_counter()
        tr, te = np.flatnonzero(f.train), np.flatnonzero(f.test)
        head = fit_cross_encoder([rows[i].reply for i in tr], [rows[i].prompt for i in tr],
                                 [rows[i].not_complying for i in tr], [rows[i].source for i in tr],
                                 encoder=encoder, device=device, settings=settings.finetune)
        p = np.asarray(head.predict_proba([rows[i].reply for i in te], [rows[i].prompt for i in te]))
        for key, flags in (("finetuned", (p >= head.threshold) | sure[te]), ("finetuned_alone", p >= head.threshold)):
            preds[key].setdefault(f.name, np.zeros(len(rows), bool))[te] = flags
            probs[key].setdefault(f.name, np.zeros(len(rows)))[te] = p
        log(f"fine-tuned judge, fold {k + 1}/{len(folds)} ({f.name}): {len(tr)} train, {len(te)} scored in "
            f"{time.perf_counter() - t:.0f} s")
        del head
    return {"finetuned": ("minilm-crossencoder-v1 (fine-tuned per fold; rules' sure verdicts stand)",
                          preds["finetuned"], probs["finetuned"]),
            "finetuned_alone": ("minilm-crossencoder-v1 alone (fine-tuned per fold)", preds["finetuned_alone"],
                                probs["finetuned_alone"])}


# --- the whole validation -----------------------------------------------------------------------------------------

@dataclass
class JudgeValidationSettings:
    sources: tuple[str, ...] = tuple(LOADERS)
    mirror: str | None = None
    limit: int | None = None          # records per file (quick looks, tests)
    seed: int = 0
    encoder: str | None = None
    device: str = "cpu"
    out_dir: Path | None = None       # heads + validation.json; None: nothing written
    harm: bool = True
    connected: list[Any] = field(default_factory=list)   # connected judges to score (fixed, not fitted)
    finetune: FinetuneSettings | None = None   # also fine-tune the cross-encoder judge in every fold (a GPU)
    model_folds: bool = True   # False: leave one source out only (4 folds instead of 22: quick GPU comparisons)

    def __post_init__(self) -> None:
        if self.harm and not self.model_folds:
            raise ValueError("the harm head is validated leave one model out: validating without the model folds "
                             "needs the harm head off (--no-harm)")


def validate(settings: JudgeValidationSettings, *, builder: FeatureBuilder | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows, reports = load_sources(settings.sources, mirror=settings.mirror, limit=settings.limit)
    for rep in reports:
        log(f"{rep.source}: {rep.usable} labelled replies of {rep.rows_read} rows read"
            + (f"; skipped {dict(rep.skipped)}" if rep.skipped else ""))
    if len({r.source for r in rows}) < 2:
        raise JudgeHeadError("leave-one-source-out validation needs at least two sources with rows")
    folds = make_folds(rows, seed=settings.seed, model_sources=MODEL_FOLD_SOURCES if settings.model_folds else ())
    cache = Path(settings.out_dir) / "cache" / "embeddings.npz" if settings.out_dir is not None else None
    builder = builder or FeatureBuilder(encoder_ref=settings.encoder, device=settings.device, cache_path=cache)
    has_harm = settings.harm and any(r.harmful is not None for r in rows)
    feats = compute_features(rows, builder, harm=has_harm, log=log)

    fixed = fixed_predictions(rows)
    connected_harm: dict[str, tuple[str, list[bool | None]]] = {}
    for cj in settings.connected:
        t = time.perf_counter()
        out = cj.judge_many([r.reply for r in rows], [r.prompt for r in rows])
        fixed[cj.kind] = (cj.name, [j.refused for j in out])
        connected_harm[cj.kind] = (cj.name, [j.harmful for j in out])
        log(f"{cj.name}: {len(rows)} replies in {time.perf_counter() - t:.0f} s")
    sure = rules_sure(rows)
    fitted = fitted_refusal_predictions(rows, feats, folds, sure)
    if settings.finetune is not None:
        fitted.update(finetuned_predictions(rows, folds, settings, sure, log=log))

    table: dict[str, dict[str, Any]] = {}
    for f in folds:
        te = np.flatnonzero(f.test)
        entry = table.setdefault(f.name, {"kind": f.kind, "judges": {}, "_idx": []})
        entry["_idx"].append(te)
    for name, entry in table.items():
        te = np.concatenate(entry.pop("_idx"))
        gold = [rows[i].not_complying for i in te]
        groups = [rows[i].prompt_key for i in te]
        labels = [rows[i].label for i in te]
        entry["train_rows_note"] = ("fitted on the other sources" if entry["kind"] == "source" else
                                    "fitted on the other models' replies to the other half of the prompts + the "
                                    "other sources")
        for key, (jname, flags) in fixed.items():
            entry["judges"][key] = {"judge": jname, **classification_metrics(gold, [flags[i] for i in te], groups,
                                                                              labels)}
        for key, (jname, preds, _) in fitted.items():
            entry["judges"][key] = {"judge": jname, **classification_metrics(gold, list(preds[name][te]), groups,
                                                                              labels)}
    result: dict[str, Any] = {
        "schema_version": 2,
        "task": "refused-vs-complied: full and partial refusals, evasions and inability count as not complying",
        "data": [r.as_dict() for r in reports], "rows": len(rows), "seed": settings.seed,
        "folds": {"source": [f.name for f in folds if f.kind == "source"],
                  "model": sorted({f.name for f in folds if f.kind == "model"})},
        "refusal": table,
        "features": {"refusal": list(REFUSAL_SPEC.blocks), "refusal_weighting": REFUSAL_WEIGHTING,
                     "harm": list(HARM_SPEC.blocks),
                     "encoder": getattr(builder.encoder, "path", settings.encoder)},
    }
    if settings.finetune is not None:
        result["finetune"] = {**asdict(settings.finetune), "input": "prompt + reply pair, longest first truncated",
                              "weighting": "balanced sources and classes"}
    if has_harm:
        result["harm"] = validate_harm(rows, feats, folds, fitted["trained"][1], connected_harm, log=log)
    if settings.out_dir is not None:
        result["heads"] = fit_final_heads(rows, feats, settings, builder, result)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def validate_harm(rows: Sequence[LabelledReply], feats: Features, folds: Sequence[Fold],
                  refusal_preds: dict[str, np.ndarray],
                  connected: dict[str, tuple[str, list[bool | None]]] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Leave one model out on the rows with harm labels (Do-Not-Answer); connected judges are scored as they are
    (an unparsed output counts as not harmful)."""
    assert feats.harm is not None
    labelled = np.array([r.harmful is not None for r in rows])
    y = np.array([bool(r.harmful) for r in rows])
    out: dict[str, Any] = {}
    for f in folds:
        if f.kind != "model" or not (f.test & labelled).any():
            continue
        te = np.flatnonzero(f.test & labelled)
        tr = f.train & labelled
        model = _fit_lr(feats.harm[tr], y[tr], HARM_C, "balanced")
        prob = model.predict_proba(feats.harm[te])[:, 1]
        refused = refusal_preds[f.name][te]
        e = out.setdefault(f.name, {"te": [], "prob": [], "refused": []})
        e["te"].append(te)
        e["prob"].append(prob)
        e["refused"].append(refused)
    table = {}
    for name, e in out.items():
        te = np.concatenate(e["te"])
        prob, refused = np.concatenate(e["prob"]), np.concatenate(e["refused"])
        gold, groups = y[te], [rows[i].prompt_key for i in te]
        table[name] = {
            "positives": int(gold.sum()),
            "judges": {
                "harm_head": {"judge": "minilm-harm-v2 (refitted per fold)", "auc": auc(gold, prob),
                              **classification_metrics(gold, prob >= 0.5, groups)},
                "complied_means_harmful": {"judge": "trained refusal judge: complied -> harmful",
                                           **classification_metrics(gold, ~refused, groups)},
                "never_harmful": {"judge": "constant: not harmful",
                                  **classification_metrics(gold, np.zeros(len(te), bool), groups)},
                **{kind: {"judge": jname, **classification_metrics(gold, [bool(flags[i]) for i in te], groups)}
                   for kind, (jname, flags) in (connected or {}).items()},
            }}
    log(f"harm judge: {len(table)} held-out models")
    return {"task": "does the reply carry harmful content (Do-Not-Answer human `harmful` labels)",
            "folds": "leave one model out, split by prompt halves", "table": table}


def fit_final_heads(rows: Sequence[LabelledReply], feats: Features, settings: JudgeValidationSettings,
                    builder: FeatureBuilder, result: dict[str, Any]) -> dict[str, Any]:
    """Fit the shipped heads on every row and write them (and nothing they were validated on is lost)."""
    from evals.scorers.refusal_head import RefusalHead

    assert settings.out_dir is not None
    out_dir = Path(settings.out_dir)
    prov = {"fitted_on": [{"source": d["source"], "usable": d["usable"], "files": d["files"]} for d in result["data"]],
            "seed": settings.seed}
    y = np.array([r.not_complying for r in rows])
    refusal = fit_linear_head("refusal", REFUSAL_SPEC, feats.refusal, y, C=REFUSAL_C, class_weight="balanced",
                              sample_weight=source_weights([r.source for r in rows]), encoder_ref=settings.encoder,
                              meta={**prov, "weighting": REFUSAL_WEIGHTING})
    refusal.save(out_dir / "refusal-head-v2.json")
    heads: dict[str, Any] = {"refusal": {"path": str(out_dir / "refusal-head-v2.json"),
                                         "fingerprint": refusal.fingerprint, "rows": len(rows)}}
    lr = _fit_lr(feats.opening, y, 3.0)
    v1 = RefusalHead([float(x) for x in lr.coef_[0]], float(lr.intercept_[0]), 0.5, 3.0, settings.encoder, prov)
    v1.save(out_dir / "head.json")
    heads["hybrid"] = {"path": str(out_dir / "head.json"), "fingerprint": v1.fingerprint}
    if settings.finetune is not None:
        from evals.scorers.encoder import minilm_path, pick_device
        from evals.scorers.judge_encoder import fit_cross_encoder

        head = fit_cross_encoder([r.reply for r in rows], [r.prompt for r in rows], list(y),
                                 [r.source for r in rows], encoder=minilm_path(settings.encoder),
                                 device=pick_device(settings.device), settings=settings.finetune, meta=prov)
        head.save(out_dir / "finetuned")
        heads["finetuned"] = {"path": str(out_dir / "finetuned"), "fingerprint": head.fingerprint, "rows": len(rows)}
    if feats.harm is not None and "harm" in result:
        labelled = np.array([r.harmful is not None for r in rows])
        yh = np.array([bool(r.harmful) for r in rows])
        harm = fit_linear_head("harm", HARM_SPEC, feats.harm[labelled], yh[labelled], C=HARM_C,
                               class_weight="balanced", encoder_ref=settings.encoder, meta=prov)
        harm.save(out_dir / "harm-head-v2.json")
        heads["harm"] = {"path": str(out_dir / "harm-head-v2.json"), "fingerprint": harm.fingerprint,
                         "rows": int(labelled.sum())}
    return heads

