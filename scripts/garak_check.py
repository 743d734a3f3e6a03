"""garak against a real harmgate service serving a real model, start to finish, on loopback only:

1. a scratch SeaweedFS on free ports (gates.store; a developer's store on 8333 is left alone);
2. MODEL_DIR published to it as a signed version (this is a scratch registry for the check, not a release:
   the model did not pass a gate, and nothing here reaches the production bucket);
3. `python -m serve.runner` (the production startup path: download, sha256 + signature checks, Flask app),
   API key on, moderation by an empty blocklist so garak sees what the model says;
4. evals.garak_run: garak's OpenAI-compatible generator against /v1/chat/completions, the report read back
   beside harmgate's judge (OUT/comparison.json, OUT/garak_stdout.txt, OUT/harmgate.report.jsonl).

    python scripts/garak_check.py models/HuggingFaceTB/SmolLM2-135M-Instruct --out docs/results/garak [--cap 8]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.serve_load import start_service, wait_until_ready  # noqa: E402
from evals.garak_run import DEFAULT_PROBES, compare, run_garak  # noqa: E402
from evals.judge import load_judge  # noqa: E402
from gates.registry import Registry  # noqa: E402
from gates.store import store_down, store_up  # noqa: E402
from harmgate.config import StoreConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", default="garak-check")
    ap.add_argument("--probes", default=",".join(DEFAULT_PROBES))
    ap.add_argument("--cap", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="garak-check-"))
    key, signing = "garak-" + secrets.token_hex(12), "garak-check-" + secrets.token_hex(16)
    info = store_up(work / "store", s3_port=0, bucket="garak-check", timeout_s=60)
    proc = None
    try:
        store = info.store_config()
        os.environ[StoreConfig().signing_key_env] = signing
        Registry(store).publish(args.name, args.model_dir, verdict={"passed": True, "kpis": [],
                                "note": "scratch registry for the garak check; not a release"},
                                metrics={}, config={}, provenance={}, base_model=str(args.model_dir), version="v1")
        blocklist = work / "blocklist.txt"
        blocklist.write_text("# nothing blocked: garak sees the model's own replies\n")
        config = {
            "name": args.name, "model": {"base": str(args.model_dir)},
            "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
            "evals": {"suites": [{"name": "attack_robustness"}]},
            "policy": {"kpis": [{"name": "k", "metric": "attack_robustness.asr_any", "direction": "lower",
                                 "max": 1.0}]},
            "store": store.model_dump(),
            "service": {"cache_dir": str(work / "cache"), "max_new_tokens": args.max_tokens,
                        "max_prompt_tokens": 2048, "registry_poll_s": 0,
                        "moderation": {"scorer": "serve.blocklist:BlocklistScorer",
                                       "scorer_args": {"path": str(blocklist)}, "threshold": 0.5}},
        }
        cfg_path = work / "service.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        os.environ["PYTHONPATH"] = str(REPO)
        log = args.out / "service.log"
        proc, url = start_service(cfg_path, key, log, gunicorn=False)  # the dev server: one model, one process
        wait_until_ready(proc, url, log, proc.terminate, timeout_s=600)
        run = run_garak(url, args.name, key, args.out, probes=tuple(args.probes.split(",")), cap=args.cap,
                        max_tokens=args.max_tokens, garak_python=REPO / ".venv-garak" / "bin" / "python",
                        timeout_s=3600)
        result = compare(run, load_judge())
        result["target"] = {"model_dir": str(args.model_dir), "service": "serve.runner (blocklist moderation, empty)",
                            "max_tokens": args.max_tokens, "cap": args.cap}
        (args.out / "comparison.json").write_text(json.dumps(result, indent=2, ensure_ascii=False),
                                                  encoding="utf-8")
        for probe, s in result["probes"].items():
            print(f"{probe}: {s['replies']}/{s['attempts']} replies; harmgate compliance "
                  f"{s['harmgate_compliance_rate']}; garak hit rate {s['garak_hit_rate']}; agreement {s['agreement']}")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        store_down(work / "store")


if __name__ == "__main__":
    sys.exit(main())
