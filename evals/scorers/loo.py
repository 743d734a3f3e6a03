"""Leave-one-dataset-out validation: how the scorer does on a *kind* of data it never saw.

For each source S: train a fresh model on the training sides of every other source (the same seeded split and
stratified sampling as the final model, at ``loo_scale`` of its budget, so the twelve folds fit a CPU), choose its
operating threshold on the other sources' held-out sides, and score a stratified sample of S (all of S is unseen,
so both sides of its split are used). Reported per S: ROC AUC per label, accuracy of ``toxicity`` at the fold's
threshold, and the fold model's functional-suite AUC (which shows what each source contributes to it).

Sources with one class for a label (SBIC: offensive posts only; OLID: no hateful class) get accuracy but no AUC
for that label.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from evals.scorers import functional
from evals.scorers.corpus import SOURCES, SourceData, build_corpus, stratified_sample
from evals.scorers.datasets import LABELS

LOO_VALIDATION_PER_SOURCE = 50


def leave_one_out(data: Mapping[str, SourceData], s: Any, *, device: str, progress: bool = True,
                  folds_to_run: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One fold per source in ``folds_to_run`` (default: every dataset in ``data``; a source built from another's
    texts, such as ``conan_quoted``, is no dataset of its own); each trains on all others, and never on a source
    built from the one left out."""
    from evals.scorers.finetune import predict_probs
    from evals.scorers.train import accuracy_by_source, auc_table, choose_threshold, fit

    tox = LABELS.index("toxicity")
    folds: dict[str, Any] = {}
    for held in folds_to_run or fold_sources(list(data), None):
        started = time.time()
        rest = {k: data[k] for k in fold_sources(list(data), held)}
        corpus = build_corpus(rest, seed=s.seed, heldout_fraction=s.heldout_fraction, scale=s.loo_scale,
                              train_counts={k: v for k, v in s.train_counts.items() if k in rest} or None,
                              heldout_counts={k: LOO_VALIDATION_PER_SOURCE for k in rest})
        test = stratified_sample(data[held].examples, s.loo_test, s.seed)
        fold_settings = replace(s, max_steps=None)
        fitted = fit(corpus.train, fold_settings, device=device, progress=progress, desc=f"without {held}", log=log)

        def score(texts: list[str], desc: str):
            return predict_probs(fitted.model, fitted.tokenizer, texts, device=device, batch_size=s.eval_batch_size,
                                 max_length=s.max_length, desc=desc)

        val_probs = score([e.text for e in corpus.heldout], "validation")
        known = [(e.labels["toxicity"], float(p[tox])) for e, p in zip(corpus.heldout, val_probs)
                 if e.labels.get("toxicity") is not None]
        threshold = choose_threshold([y for y, _ in known], [p for _, p in known])
        probs = score([e.text for e in test], f"{held} (left out)")
        aucs = auc_table(test, probs)
        acc = accuracy_by_source(test, [float(p[tox]) for p in probs], threshold["threshold"])
        suite = functional.evaluate(lambda texts: [float(p[tox]) for p in score(texts, "functional")],
                                    threshold=threshold["threshold"])
        folds[held] = {
            "n": len(test), "train_examples": len(corpus.train), "steps": fitted.stats["steps"],
            "threshold": threshold["threshold"], "validation_balanced_accuracy": threshold["balanced_accuracy"],
            "auc": {lab: {k: aucs[lab].get(k) for k in ("auc", "n", "positives")} for lab in LABELS},
            "toxicity_accuracy_at_threshold": acc.get(held, {}).get("accuracy"),
            "functional_auc": suite["roc_auc"], "functional_accuracy": suite["accuracy"],
            "seconds": round(time.time() - started, 1)}
        f = folds[held]
        log(f"left out {held}: toxicity AUC {f['auc']['toxicity']['auc']}, accuracy at {f['threshold']:.3f} "
            f"{f['toxicity_accuracy_at_threshold']}, functional AUC {f['functional_auc']} ({f['seconds']} s)")
        del fitted
    return summarise(folds, {"loo_scale": s.loo_scale, "loo_test": s.loo_test, "sources": list(data),
                             "validation_per_source": LOO_VALIDATION_PER_SOURCE, "seed": s.seed})


def fold_sources(keys: Sequence[str], held: str | None) -> list[str]:
    """What the fold leaving out ``held`` trains on: every other source but those built from it. ``held`` None:
    the folds themselves, one per dataset (a source built from another's texts is none)."""
    if held is None:
        return [k for k in keys if SOURCES[k].derived_from is None]
    return [k for k in keys if k != held and SOURCES[k].derived_from != held]


def summarise(folds: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    aucs = [f["auc"]["toxicity"]["auc"] for f in folds.values() if f["auc"]["toxicity"]["auc"] is not None]
    return {"folds": dict(folds), "settings": dict(settings),
            "mean_toxicity_auc": round(sum(aucs) / len(aucs), 4) if aucs else None}


def merge(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Folds run in separate processes (``harmgate scorer loo --folds``) as one table; their settings must agree."""
    if not parts:
        raise ValueError("nothing to merge")
    settings = parts[0]["settings"]
    folds: dict[str, Any] = {}
    for p in parts:
        if p["settings"] != settings:
            raise ValueError(f"leave-one-out parts ran with different settings: {settings} vs {p['settings']}")
        twice = set(folds) & set(p["folds"])
        if twice:
            raise ValueError(f"fold(s) {', '.join(sorted(twice))} appear in more than one part")
        folds.update(p["folds"])
    return summarise(folds, settings)
