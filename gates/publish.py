"""The publish stage: a run directory whose verdict passed -> a signed version in the registry."""

from __future__ import annotations

import logging
from typing import Any

from gates.registry import NotApproved, Registry, RegistryError, default_version
from harmgate.rundir import RunDir, read_json, write_json

log = logging.getLogger("harmgate.publish")


def failing_kpis(verdict: dict[str, Any]) -> list[str]:
    """Human-readable names (with value/bound when the verdict has them) of KPIs that failed."""
    out = []
    for kpi in verdict.get("kpis") or []:
        if not isinstance(kpi, dict):
            continue
        status = str(kpi.get("status", "")).lower()
        failed = kpi.get("passed") is False or status in ("fail", "failed", "block", "blocked", "missing")
        if failed and kpi.get("severity", "block") != "warn":
            detail = kpi.get("message") or kpi.get("reason") or ""
            if not detail and "value" in kpi:
                detail = f"value {kpi['value']}"
            out.append(f"{kpi.get('name', '?')}" + (f" ({detail})" if detail else ""))
    return out


def publish_run(run: RunDir, *, version: str | None = None, registry: Registry | None = None) -> dict[str, Any]:
    """Publish the run's merged model; safe to rerun after any failure.

    The version is chosen once and written to ``publish.pending.json`` before anything is uploaded; a rerun
    (without ``version``, or with the same one) resumes that version instead of starting another, and a
    rerun after success returns the same approved version (gates.registry.Registry.publish, ``resume``).
    """
    config = run.config()
    verdict = read_json(run.verdict)
    if not isinstance(verdict, dict) or verdict.get("passed") is not True:
        failing = failing_kpis(verdict) if isinstance(verdict, dict) else []
        why = f"failing KPIs: {', '.join(failing)}" if failing else f"{run.verdict} does not say passed: true"
        raise NotApproved(f"refusing to publish {config.name}: the release gate did not pass ({why})")
    if not (run.merged_model_dir / "config.json").is_file():
        raise RegistryError(f"no merged model in {run.merged_model_dir}: run the merge stage first")
    metrics = read_json(run.eval_summary)
    # The data manifest carries provenance and licences; a run trained elsewhere may not have one.
    provenance = read_json(run.data_manifest) if run.data_manifest.is_file() else {"data_manifest": None}
    earlier = _earlier_version(run, config.name)
    resume = earlier is not None and version in (None, earlier)
    version = earlier if resume else (version or default_version())
    if resume:
        log.info("resuming the publish of %s:%s (recorded in %s)", config.name, version, run.root)
    write_json(run.publish_pending, {"name": config.name, "version": version})
    registry = registry or Registry(config.store)
    record = registry.publish(config.name, run.merged_model_dir, verdict=verdict, metrics=metrics,
                              config=config.model_dump(mode="json"), provenance=provenance,
                              base_model=config.model.base, version=version,
                              attachments=_report_attachment(run), resume=resume)
    record["run_dir"] = str(run.root)
    write_json(run.publish_record, record)
    run.publish_pending.unlink(missing_ok=True)
    return record


def _earlier_version(run: RunDir, name: str) -> str | None:
    """The version an unfinished (or finished) publish of this run chose, if any."""
    for path in (run.publish_pending, run.publish_record):
        if path.is_file():
            record = read_json(path)
            if isinstance(record, dict) and record.get("name") == name and isinstance(record.get("version"), str):
                return record["version"]
    return None


def _report_attachment(run: RunDir) -> dict[str, bytes]:
    """The run's dashboard, published beside the manifest (signed with it) for the service's /dashboard.

    A dashboard that cannot be rendered does not hold back a model the gate approved: it is logged and left out.
    """
    from gates.report import REPORT_FILE, build_report, render_report

    try:
        return {REPORT_FILE: render_report(build_report(run, registry=True)).encode()}
    except Exception as err:  # noqa: BLE001 - see docstring
        log.warning("publishing without %s: the report could not be rendered (%s: %s)", REPORT_FILE,
                    type(err).__name__, err)
        return {}
