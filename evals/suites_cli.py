"""`harmgate suites list`: every registered suite with its metrics and sources, and where each source would be
read from on this machine (a mirror file, or the hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

suites_app = typer.Typer(no_args_is_help=True, help="Evaluation suites (the names evals.suites takes).")


def describe_suites(mirror: str | None, names: list[str] | None = None, *, detail: bool = False) -> list[str]:
    """Rich-markup lines: per suite its kind, metrics and, per source, its hub id and where it is read from here."""
    from evals.suites import get_suite, registered_suites
    from evals.suites.sources import where_is

    lines: list[str] = []
    for name in names or registered_suites():
        suite = get_suite(name)
        lines.append(f"[bold]{name}[/] [dim]({suite.kind})[/] {suite.description}")
        if detail:
            lines.extend(f"    metric [cyan]{m}[/]: {doc}" for m, doc in suite.metrics_doc.items())
        else:
            lines.append(f"    metrics: {', '.join(suite.metrics_doc)}")
        for s in suite.sources:
            hub = f"hub {s.hub}" if s.hub else "no hub copy"
            lines.append(f"    source [green]{s.key}[/] ({hub}; {s.licence}) -> {where_is(s, mirror)}")
            if detail and s.description:
                lines.append(f"        {s.description}")
    return lines


@suites_app.command("list")
def list_suites(name: Optional[list[str]] = typer.Argument(None, help="Only these suites (shown in detail)"),
                mirror: Optional[Path] = typer.Option(None, help="Data mirror (default $HARMGATE_DATA_MIRROR)")) -> None:
    """Registered suites, their metrics and sources (hub id, and the file used here when mirrored)."""
    from evals.suites import get_suite

    console = Console(soft_wrap=True)
    try:
        for n in name or []:
            get_suite(n)
    except KeyError as err:
        console.print(f"[bold red]error:[/] {err.args[0]}")
        raise typer.Exit(2)
    for line in describe_suites(str(mirror) if mirror else None, name or None, detail=bool(name)):
        console.print(line, highlight=False)
