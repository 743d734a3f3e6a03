"""`harmgate feedback export`: the service's stored ratings -> a point-wise dataset for the next ULMA run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

feedback_app = typer.Typer(no_args_is_help=True, help="Production feedback (docs/FEEDBACK.md).")


@feedback_app.command("export")
def export(config: Path = typer.Option(..., "--config", "-c", help="Run or service config (its store and name; "
                                       "service.model_name if set)"),
           out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, heldout.jsonl and "
                                    "export_manifest.json"),
           version: Optional[list[str]] = typer.Option(None, help="Only these versions (default: all)"),
           holdout: float = typer.Option(0.2, help="Share of prompts held out for the feedback_heldout suite"),
           seed: int = typer.Option(0, help="Seed of the prompt-level split"),
           include_moderated: bool = typer.Option(False, help="Also export replies moderation replaced")) -> None:
    """Join every rating with the completion it rates; write train (good -> positive, bad -> negative) and held-out
    splits plus a manifest of exactly which feedback went where."""
    from align.feedback import export_feedback, write_export
    from gates.registry import Registry, RegistryError
    from harmgate.config import ConfigError, load_config

    try:
        cfg = load_config(config)
        registry = Registry(cfg.store)
        name = cfg.service.model_name or cfg.name
        result = export_feedback(registry.objects, registry.prefix, name, versions=version, holdout=holdout,
                                 seed=seed, include_moderated=include_moderated)
        paths = write_export(result, out)
    except (ConfigError, RegistryError, ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    counts = result.manifest["counts"]
    typer.echo(f"feedback of {name} ({', '.join(result.manifest['versions']) or 'no versions'}): "
               f"{counts['feedback_records']} ratings, {counts['rows']} usable; train {counts['train']} -> "
               f"{paths['train']}; held out {counts['heldout']} -> {paths['heldout']}; skipped {counts['skipped']}")
    if not result.train:
        typer.echo("warning: no training rows (nothing rated yet, or everything held out)", err=True)
