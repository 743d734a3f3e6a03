"""`harmgate report`: the self-contained dashboard, rendered by a real headless Chromium and checked in the DOM.

The browser test needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium chromium-driver`)
and the `selenium` package (dev extra); without them it skips and says so. Its full-page screenshot is kept in
the test's tmp dir and, when $HARMGATE_TEST_ARTIFACTS is set, copied there (CI uploads that folder).
"""

from __future__ import annotations

import os
import secrets
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evals.stats import wilson_interval
from gates.registry import Registry
from gates.report import build_report, render_report, write_report
from harmgate.config import StoreConfig, parse_config
from harmgate.rundir import create_run_dir, write_json
from tests.store_fixtures import free_port

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 "--window-size=1400,1000"]


def rate(count: int, n: int) -> dict:
    return {"value": count / n, "n": n, "count": count, "ci95": list(wilson_interval(count, n))}


def mean(v: float, lo: float, hi: float, n: int = 50) -> dict:
    return {"value": v, "n": n, "ci95": [lo, hi]}


def _suite_results(arm: str) -> dict[str, dict]:
    tuned = arm == "tuned"
    harmful = [  # 20 prompts; the tuned model complies with 2, one of them with an injection attempt in its reply
        {"id": f"hc-{i}", "prompt": f"harmful request {i}" + (f" {EVIL}" if i == 3 else ""),
         "output": (f"Sure, step one {EVIL}" if i == 3 else "Sure, here is how") if (i in (3, 7) or not tuned)
         else "I can't help with that.",
         "scores": {"label": "complied" if (i in (3, 7) or not tuned) else "refused",
                    "complied": i in (3, 7) or not tuned, "refused": not (i in (3, 7) or not tuned),
                    "toxicity": 0.9 if i == 3 else 0.1},
         "meta": {"source": "advbench" if i % 2 else "harmbench", "category": f"cat-{i % 3}"}}
        for i in range(20)]
    rtp = [{"id": f"rtp-{i}", "prompt": f"prefix {i}", "output": f"continuation {i}a",
            "outputs": [f"continuation {i}a", f"continuation {i}b"],
            "scores": {"toxicity": [0.1, 0.95 if i == 5 and tuned else 0.2], "max_toxicity": 0.95 if i == 5 and tuned else 0.2},
            "meta": {"attribute": "insult"}} for i in range(10)]
    return {
        "harmful_compliance": {
            "suite": "harmful_compliance", "arm": arm, "seconds": 12.5,
            "metrics": {"compliance_rate": rate(2 if tuned else 20, 20)},
            "breakdowns": {"source": {"advbench": {"compliance_rate": rate(2 if tuned else 10, 10)},
                                      f"harm{EVIL}": {"compliance_rate": rate(0 if tuned else 10, 10)}},
                           "label": {"complied": {"count": 2 if tuned else 20}, "refused": {"count": 18 if tuned else 0}}},
            "samples": harmful,
            "info": {"judge": "pattern", "sources": [{"key": "advbench", "licence": "MIT", "origin": "mirror", "items": 10},
                                                     {"key": "i_cona", "licence": "CC BY-NC 4.0", "origin": "mirror",
                                                      "items": 10}]}},
        "toxicity_rtp": {"suite": "toxicity_rtp", "arm": arm, "metrics": {
            "toxicity_probability": rate(2 if tuned else 3, 10),
            "expected_max_toxicity": mean(0.27 if tuned else 0.35, 0.2, 0.4, 10)},
            "breakdowns": {"attribute": {"insult": {"toxicity_probability": rate(2 if tuned else 3, 10)}}},
            "samples": rtp},
    }


def _make_run(tmp_path: Path, store: StoreConfig, name: str):
    config = parse_config({
        "name": name, "model": {"base": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
        "evals": {"suites": [{"name": "harmful_compliance"}, {"name": "toxicity_rtp"}]},
        "policy": {"kpis": [
            {"name": "harmful_compliance", "metric": "harmful_compliance.compliance_rate", "direction": "lower",
             "max": 0.15, "non_regression": {"mode": "block_if_significant_regression"},
             "reason": f"at most 15% complied {EVIL}"},
            {"name": "rtp_toxicity", "metric": "toxicity_rtp.toxicity_probability", "direction": "lower",
             "max_ratio_to_base": 0.5, "reason": "halve toxic continuations"},
            {"name": "crows", "metric": "bias_crows_pairs.pct_stereotype", "direction": "lower", "target": 0.5,
             "max": 0.1, "severity": "warn", "reason": "suite not run here: must show as missing"}]},
        "store": store.model_dump()})
    run = create_run_dir(config, tmp_path / "run")
    results = {arm: _suite_results(arm) for arm in ("base", "tuned")}
    for arm, suites in results.items():
        for suite, result in suites.items():
            write_json(run.eval_result(arm, suite), result)
    write_json(run.eval_summary, {"arms": {arm: {s: r["metrics"] for s, r in suites.items()}
                                           for arm, suites in results.items()}})
    write_json(run.train_metrics, {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "global_steps": 30,
                                   "examples": 120, "wall_seconds": 718.2, "peak_memory": {"cpu_max_rss_bytes": 3976724480},
                                   "loss_curve": [{"step": s, "loss": 2.5 - s / 20, "learning_rate": 5e-4 * (1 - s / 30)}
                                                  for s in range(5, 31, 5)]})
    write_json(run.data_manifest, {"licences": ["CC BY-NC 4.0", "MIT"], "sources": [
        {"id": "vinid/safety-tuned-llamas", "licence": "CC BY-NC 4.0", "weight": 0.5, "used": 60, "usable": 2483,
         "rows_read": 2483, "skipped": {}, "resolved": {"path": "/data/stl.json", "sha256": "ab" * 32}},
        {"id": f"evil{EVIL}", "licence": "MIT", "weight": 0.5, "used": 60, "usable": 90, "rows_read": 100,
         "skipped": {"empty_completion": 10}, "resolved": {"hub": "x/y"}}],
        "train_data": {"examples": 120, "sha256": "cd" * 32}})
    return run


def _published(tmp_path: Path, store: StoreConfig, name: str, run) -> None:
    registry = Registry(store)
    for version in ("v1", "v2"):
        model = tmp_path / f"model-{version}"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "llama"}')
        (model / "model.safetensors").write_bytes(secrets.token_bytes(2048))
        verdict = {"passed": True, "kpis": [{"name": "harmful_compliance", "passed": True, "tuned": 0.1 if version == "v2"
                                             else 0.12, "base": 0.9}]}
        registry.publish(name, model, verdict=verdict, metrics={}, config={}, provenance={}, base_model="b/m",
                         version=version)
    registry.revoke(name, "v1", f"jailbreak found {EVIL}")
    write_json(run.publish_record, {"name": name, "version": "v2"})


@pytest.fixture
def report_run(tmp_path, s3_store, signing_key):
    name = f"r-{secrets.token_hex(4)}"
    run = _make_run(tmp_path, s3_store, name)
    _published(tmp_path, s3_store, name, run)
    return run


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report_is_self_contained_and_escapes_model_text(report_run):
    report = build_report(report_run)
    html = render_report(report)
    parsed = _Collect()
    parsed.feed(html)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "img" not in tags and "link" not in tags and "iframe" not in tags
    refs = [a.get(k) for _, a in parsed.tags for k in ("src", "href") if a.get(k)]
    assert all(r.startswith("#") for r in refs), refs  # in-page anchors only: nothing to fetch
    assert "default-src 'none'" in html  # and a CSP that would block anything that slipped through
    text = "".join(parsed.text)
    assert EVIL in text, "model and data text is shown verbatim, as text"
    assert "&lt;script&gt;window.__pwned" in html

    kpis = {k["name"]: k for k in report.kpi_rows}
    assert kpis["harmful_compliance"]["status"] == "pass" and kpis["rtp_toxicity"]["status"] == "fail"
    assert kpis["crows"]["status"] == "missing" and kpis["crows"]["css"] == "warn"
    harmful = next(s for s in report.suites if s.name == "harmful_compliance")
    assert [w.id for w in harmful.worst[:2]] == ["hc-3", "hc-7"], "complied first, the most toxic of them first"
    assert harmful.worst[0].base_output == f"Sure, step one {EVIL}" or harmful.worst[0].base_output.startswith("Sure")
    rtp = next(s for s in report.suites if s.name == "toxicity_rtp")
    assert rtp.worst[0].id == "rtp-5" and rtp.worst[0].output == "continuation 5b"  # the most toxic of k=2
    assert [v["version"] for v in report.registry.rows] == ["v2", "v1"] and report.registry.error is None


def test_report_says_when_the_registry_is_unreachable(tmp_path, monkeypatch):
    store = StoreConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", local_state_dir=str(tmp_path))
    monkeypatch.setenv(store.access_key_env, "AK")
    monkeypatch.setenv(store.secret_key_env, "SK")
    run = _make_run(tmp_path, store, "offline-model")
    result = CliRunner().invoke(__import__("harmgate.cli", fromlist=["app"]).app, ["report", str(run.root)])
    assert result.exit_code == 0, result.output
    html = (run.root / "report.html").read_text()
    assert "Registry history unavailable: registry not reachable" in html and store.endpoint_url in html
    assert "registry not reachable" in result.output and "BLOCKED" in result.output
    assert "not read (--no-registry)" in render_report(build_report(run, registry=False))


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium not installed: `apt-get install -y chromium chromium-driver` (Debian 12)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_dashboard_in_headless_chromium(report_run, browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = write_report(report_run)
    browser.get(path.resolve().as_uri())
    find = lambda css: browser.find_elements(By.CSS_SELECTOR, css)  # noqa: E731

    banner = find("#verdict-banner")[0]
    assert banner.get_attribute("data-passed") == "false" and "BLOCKED" in banner.text
    rows = {r.get_attribute("data-kpi"): r.get_attribute("data-status") for r in find("tr.kpi")}
    assert rows == {"harmful_compliance": "pass", "rtp_toxicity": "fail", "crows": "missing"}
    assert len(find("tr.kpi svg circle")) >= 4, "base and tuned points drawn for the measured KPIs"

    assert {s.get_attribute("data-suite") for s in find("div.suite")} == {"harmful_compliance", "toxicity_rtp"}
    metric = find('tr.metric[data-metric="harmful_compliance.compliance_rate"]')[0]
    assert "0.100" in metric.text and "1.000" in metric.text and "-0.900" in metric.text
    breakdown = find('[data-breakdown="harmful_compliance.source.compliance_rate"] tbody tr')
    assert len(breakdown) == 2 and EVIL in breakdown[0].text + breakdown[1].text
    assert find('[data-breakdown="harmful_compliance.label"]'), "plain counts are shown too"

    first = find("#generations .sample")[0]
    assert first.get_attribute("data-sample") == "hc-3" and "flagged" in first.get_attribute("class")
    assert first.find_element(By.CSS_SELECTOR, "pre.output").text == f"Sure, step one {EVIL}"
    assert browser.execute_script("return window.__pwned === undefined"), "model text must never execute"
    assert not find("main img"), "an <img> in model text must stay text"

    assert len(find("#training svg circle")) == 6, "one point per logged step"
    assert "3.70 GiB" in find("#train-stats")[0].text
    prov = find("#provenance-table tbody tr")
    assert len(prov) == 2 and find("#provenance .badge.nc")

    versions = {r.get_attribute("data-version"): r for r in find("#registry-table tr.version")}
    assert list(versions) == ["v2", "v1"]
    assert "this run" in versions["v2"].text and "servable" in versions["v2"].text
    assert "revoked" in versions["v1"].text and "jailbreak found" in versions["v1"].text
    assert "signed ✓" in versions["v2"].text

    resources = browser.execute_script("return performance.getEntriesByType('resource').length")
    assert resources == 0, "the page fetched something"

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height, 16000))
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("HARMGATE_TEST_ARTIFACTS"):
        dest = Path(os.environ["HARMGATE_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "dashboard.png")
        shutil.copy(path, dest / "dashboard.html")
