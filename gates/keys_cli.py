"""`harmgate keys generate|list|rotate|export`: the publisher's signing keys and the trust file (gates.keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

keys_app = typer.Typer(no_args_is_help=True, help="Signing keys (publisher) and the trust file (serving nodes).")
console = Console()
KEYS_DIR = Path(".harmgate/keys")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(2)


def _show(entry, what: str, keys_dir: Path) -> None:
    console.print(f"{what} key {entry.key_id} ({entry.algorithm}{', ' + entry.label if entry.label else ''})\n"
                  f"  public key: {keys_dir / (entry.key_id[:16] + '.pub')}\n"
                  f"  trust file (for serving nodes): {keys_dir / 'trust.json'}", soft_wrap=True, highlight=False)


@keys_app.command("generate")
def generate_command(keys_dir: Path = typer.Option(KEYS_DIR, "--dir", help="Keys folder"),
                     label: str = typer.Option("", help="A name for the key (shown by `keys list`)"),
                     curve: str = typer.Option("p256", help="p256, p384 or p521")) -> None:
    """Make the first signing key pair: signing.key (private, 0600), its .pub and trust.json."""
    from gates.keys import generate
    from gates.trust import TrustError

    try:
        entry = generate(keys_dir, label=label, curve=curve)
    except TrustError as err:
        _fail(str(err))
    _show(entry, "generated", keys_dir)
    console.print(f"  private key: {keys_dir / 'signing.key'} (publisher only: export "
                  f"HARMGATE_SIGNING_KEY_FILE={keys_dir / 'signing.key'})", soft_wrap=True, highlight=False)


@keys_app.command("rotate")
def rotate_command(keys_dir: Path = typer.Option(KEYS_DIR, "--dir", help="Keys folder"),
                   grace_days: float = typer.Option(..., help="Days the retired key keeps verifying what it signed"),
                   label: str = typer.Option("", help="A name for the new key"),
                   curve: str = typer.Option("p256", help="p256, p384 or p521")) -> None:
    """New signing key; the old one is retired (verifies until the grace date, then refused) and deleted."""
    from gates.keys import rotate
    from gates.trust import TrustError, iso

    try:
        retired, new = rotate(keys_dir, grace_days=grace_days, label=label, curve=curve)
    except TrustError as err:
        _fail(str(err))
    _show(new, "new signing", keys_dir)
    console.print(f"retired key {retired.key_id} verifies until {iso(retired.valid_until)}; copy the trust file to "
                  f"every serving node, and re-sign what must outlive that date "
                  f"(`harmgate registry resign NAME VERSION`)", soft_wrap=True, highlight=False)


@keys_app.command("list")
def list_command(trust_file: Optional[Path] = typer.Option(None, help="Trust file (default: $HARMGATE_TRUST_FILE, "
                                                                       "else .harmgate/keys/trust.json)")) -> None:
    """Trusted keys: id, algorithm, status, validity, and whether each verifies now."""
    import os

    from gates.keys import describe
    from gates.trust import TrustError, TrustStore

    path = trust_file or Path(os.environ.get("HARMGATE_TRUST_FILE") or KEYS_DIR / "trust.json")
    try:
        rows = describe(TrustStore.load(path))
    except TrustError as err:
        _fail(str(err))
    console.print(f"{path}: {len(rows)} key(s)", highlight=False, soft_wrap=True, markup=False)
    for r in rows:
        state = "verifies" if r["verifies_now"] else f"REFUSED ({r['why_not']})"
        console.print(f"  {r['key_id'][:16]}  {r['algorithm']}  {r['status']}  from {r['valid_from'] or '-'}  "
                      f"until {r['valid_until'] or '-'}  {state}  {r['label']}", soft_wrap=True, highlight=False,
                      markup=False)


@keys_app.command("export")
def export_command(key_id: str = typer.Argument(..., help="Key id (or its first characters)"),
                   trust_file: Path = typer.Option(KEYS_DIR / "trust.json", help="Trust file"),
                   out: Optional[Path] = typer.Option(None, help="Write the PEM here (default: stdout)")) -> None:
    """A trusted public key as PEM, for `model_signing verify key --public_key`."""
    from gates.keys import export_public
    from gates.trust import TrustError, TrustStore

    try:
        pem = export_public(TrustStore.load(trust_file), key_id)
    except TrustError as err:
        _fail(str(err))
    if out is None:
        typer.echo(pem.decode(), nl=False)
    else:
        out.write_bytes(pem)
        console.print(f"public key: {out}", highlight=False)
