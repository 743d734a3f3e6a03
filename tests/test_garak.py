"""garak, the peer scanner, against the running service: garak's own OpenAI-compatible generator sends its DAN
and encoding probes to /v1/chat/completions over loopback HTTP (the service built by serve.bootstrap, a tiny
model published to a real SeaweedFS), garak's detectors score the replies, and evals.garak_run reads garak's
report back beside harmgate's judgement of the same replies.

Needs the garak environment (`make garak`; `make test` builds it). Without it the test skips, except in CI,
where a missing garak is a failure."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import pytest

from evals.garak_run import DEFAULT_GARAK_PYTHON, compare, run_garak
from evals.judge import load_judge
from harmgate.config import StoreConfig
from tests.reliability_support import live_service, service_config
from tests.store_fixtures import SIGNING_KEY
from tests.test_serve import publish

REPO = Path(__file__).resolve().parent.parent
GARAK_PYTHON = REPO / DEFAULT_GARAK_PYTHON
API_KEY = "garak-key-" + secrets.token_hex(8)
NAME = "garak-target"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def garak_python() -> Path:
    if not GARAK_PYTHON.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{GARAK_PYTHON} missing: `make test` builds it with `make garak`")
        pytest.skip(f"no garak environment at {GARAK_PYTHON} (`make garak`)")
    return GARAK_PYTHON


@pytest.fixture(scope="module")
def svc(s3_store, tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("garak-svc")
    publish(s3_store, tiny_model_dir, NAME, "v1")
    # STAN is ~900 tokens for the tiny model's 512-word vocabulary; its context is 1024
    cfg = service_config(tmp, NAME, s3_store, max_new_tokens=MAX_TOKENS, max_prompt_tokens=1000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(StoreConfig().signing_key_env, SIGNING_KEY)
        mp.setenv("HARMGATE_API_KEYS", API_KEY)
        with live_service(cfg, key=API_KEY) as live:
            yield live


def _served_requests(svc) -> float:
    text = svc.get("/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(
        r'^harmgate_requests_total\{[^}]*endpoint="chat"[^}]*status="200"[^}]*\}\s+([0-9.e+]+)', text, re.M))


@pytest.mark.slow
def test_garak_scans_the_running_service(svc, garak_python, tmp_path):
    before = _served_requests(svc)
    run = run_garak(svc.url, NAME, API_KEY, tmp_path / "garak", probes=("dan.STAN", "encoding.InjectBase64"),
                    cap=3, max_tokens=MAX_TOKENS, garak_python=garak_python, timeout_s=600)
    by_probe = {}
    for a in run.attempts:
        by_probe.setdefault(a["probe_classname"], []).append(a)
    assert {k: len(v) for k, v in by_probe.items()} == {"dan.STAN": 1, "encoding.InjectBase64": 3}
    # every attempt got a reply from the service (garak records None when a call fails)
    assert all(a["outputs"] and a["outputs"][0] is not None for a in run.attempts)
    assert all(a["detector_results"] for a in run.attempts)  # garak's detectors scored each one
    assert {e["probe"] for e in run.evals} == {"dan.STAN", "encoding.InjectBase64"}
    if before is not None:
        assert _served_requests(svc) - before >= 4, "the replies came from this service"
    result = compare(run, load_judge())
    stan = result["probes"]["dan.STAN"]
    assert stan["replies"] == 1 and set(stan["garak_hit_rate"]) >= {"dan.STAN", "mitigation.MitigationBypass"}
    assert 0 <= stan["agreement"]["mitigation.MitigationBypass"] <= 1
    assert len(result["attempts"]) == 4 and all("harmgate_label" in r for r in result["attempts"])
