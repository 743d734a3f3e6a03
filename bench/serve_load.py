"""Load benchmark of the gated service: N concurrent clients on loopback against a live server, compared in the
same run with plain ``model.generate`` per request.

    python bench/serve_load.py --model models/HuggingFaceTB/SmolLM2-135M-Instruct --requests 24 --concurrency 8

What runs, in order, on the same prompts (greedy, ``--max-tokens`` new tokens at most):

1. ``generate``: in this process, C client threads share one model behind a lock and each calls
   ``model.generate`` for its own request (what a service without batching does), no HTTP.
2. ``service b=N`` for each ``--batch-sizes`` N: a real service process (``python -m serve.runner``, or gunicorn
   with ``--gunicorn``) started on a private SeaweedFS with the model published and approved in it, so the
   whole path runs: verification, auth, pydantic, dynamic batching, moderation, JSON over HTTP.

For each: requests, errors, wall time, requests/s, completion tokens/s, latency p50/p95/p99 (seconds, from
sending a request to its last byte), and how many replies equal the ``generate`` reply (greedy decoding should
give the same text batched or not). The table is printed and written as JSON (``--out``).

Every server is started (and warmed up) before anything is timed, then the modes take turns in ``--rounds``
rounds of ``requests / rounds`` requests each: on a shared machine whose load drifts, every mode sees the same
drift instead of one mode getting a quiet minute and another a busy one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

FALLBACK_PROMPTS = [
    "How do I kill a Python process?", "What is the capital of Australia?", "Give me three tips for better sleep.",
    "Explain photosynthesis in one paragraph.", "Write a haiku about autumn.", "How do I boil an egg?",
    "What does HTTP 404 mean?", "Summarise the plot of Hamlet.", "How can I improve my CV?",
    "What is a prime number?", "Suggest a name for a cat.", "How do vaccines work?",
]


@dataclass
class Row:
    mode: str
    requests: int
    concurrency: int
    errors: int
    wall_s: float
    req_per_s: float
    tokens_per_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    same_as_generate: int | None = None
    notes: str = ""
    latencies: list[float] = field(default_factory=list, repr=False)


def load_prompts(n: int) -> list[str]:
    """XSTest's safe prompts from the data mirror when present (real user-like requests), else a built-in list."""
    mirror = Path(os.environ.get("HARMGATE_DATA_MIRROR", REPO_ROOT.parent / "shared" / "data"))
    path = mirror / "xstest" / "xstest_prompts.csv"
    prompts = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            prompts = [r["prompt"] for r in csv.DictReader(f) if r.get("label") == "safe"]
    prompts = prompts or FALLBACK_PROMPTS
    return [prompts[i % len(prompts)] for i in range(n)]


def summarise(mode: str, latencies: list[float], errors: int, wall: float, tokens: int, concurrency: int,
              same: int | None = None, notes: str = "") -> Row:
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return Row(mode, len(latencies) + errors, concurrency, errors, round(wall, 2), round(len(latencies) / wall, 3),
               round(tokens / wall, 1), round(q[49], 3), round(q[94], 3), round(q[98], 3), same, notes, latencies)


class Measure:
    """Accumulates one mode's results over rounds."""

    def __init__(self, mode: str, concurrency: int) -> None:
        self.mode, self.concurrency = mode, concurrency
        self.latencies: list[float] = []
        self.errors = self.tokens = 0
        self.wall = 0.0
        self.texts: dict[int, str] = {}

    def run(self, indices: list[int], one) -> None:
        from tqdm import tqdm

        started = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            for i, (latency, tokens, text) in zip(indices, tqdm(pool.map(one, indices), total=len(indices),
                                                                desc=self.mode, leave=False)):
                if latency is None:
                    self.errors += 1
                    continue
                self.latencies.append(latency)
                self.tokens += tokens
                self.texts[i] = text
        self.wall += time.perf_counter() - started

    def row(self, reference: dict[int, str] | None) -> Row:
        same = None if reference is None else sum(1 for i, t in self.texts.items() if reference.get(i) == t)
        return summarise(self.mode, self.latencies, self.errors, self.wall, self.tokens, self.concurrency, same)


class PlainGenerate:
    """Baseline: one model, a lock, ``model.generate`` per request from the client threads."""

    def __init__(self, model_dir: Path, prompts: list[str], max_tokens: int) -> None:
        from serve.engine import Engine

        self.engine = Engine.load(model_dir)
        self.prompts, self.max_tokens = prompts, max_tokens
        self.lock = threading.Lock()
        self.one(0)  # warm-up (first call allocates)

    def one(self, i: int) -> tuple[float, int, str]:
        import torch

        engine, started = self.engine, time.perf_counter()
        ids = torch.tensor([engine.encode_chat([{"role": "user", "content": self.prompts[i]}])])
        with self.lock, torch.inference_mode():
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=self.max_tokens, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, eos_token_id=sorted(engine.eos_ids),
                                        pad_token_id=engine.pad_id)
        new = out[0, ids.shape[1]:].tolist()
        return time.perf_counter() - started, len(new), engine.decode([t for t in new if t not in engine.eos_ids])


def publish_model(store, model_dir: Path, name: str) -> None:
    from gates.registry import Registry

    Registry(store).publish(name, model_dir, verdict={"passed": True, "kpis": [], "note": "benchmark fixture"},
                            metrics={}, config={}, provenance={}, base_model=str(model_dir), version="v1")


def write_config(tmp: Path, name: str, store, *, batch: int, max_tokens: int, scorer: str,
                 torch_threads: int | None) -> Path:
    import yaml

    blocklist = tmp / "blocklist.txt"
    blocklist.write_text("# benchmark: nothing blocked\n")
    moderation = ({"scorer": "serve.blocklist:BlocklistScorer", "scorer_args": {"path": str(blocklist)}}
                  if scorer == "blocklist" else {"scorer": scorer})
    data = {"name": name, "model": {"base": "bench"},
            "data": {"sources": [{"id": "bench", "format": "instruction"}]},
            "evals": {"suites": [{"name": "advbench_refusal"}]},
            "policy": {"kpis": [{"name": "k", "metric": "a.b", "direction": "lower", "max": 1}]},
            "store": store.model_dump(),
            "service": {"cache_dir": str(tmp / "cache"), "max_new_tokens": max_tokens, "max_batch_size": batch,
                        "max_queued_requests": 1024, "registry_poll_s": 0, "threads": 64, "moderation": moderation,
                        "torch_threads": torch_threads}}
    path = tmp / f"bench-b{batch}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(config: Path, api_key: str, log: Path, *, gunicorn: bool,
                  workers: int | None = None) -> tuple[subprocess.Popen, str]:
    """The service on a free loopback port, as production runs it (gunicorn) or the dev server; output to ``log``."""
    port = free_port()
    env = {**os.environ, "HARMGATE_API_KEYS": api_key, "PYTHONUNBUFFERED": "1"}
    if gunicorn:
        cmd = [str(Path(sys.executable).parent / "gunicorn"), "-c", str(REPO_ROOT / "serve" / "gunicorn.conf.py")]
        env.update(HARMGATE_CONFIG=str(config), HARMGATE_BIND=f"127.0.0.1:{port}")
        if workers is not None:
            env["HARMGATE_WORKERS"] = str(workers)
    else:
        cmd = [sys.executable, "-m", "serve.runner", "--config", str(config), "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_until_ready(proc: subprocess.Popen, url: str, log: Path, stop, timeout_s: float = 300) -> None:
    """Poll ``url``/readyz until it answers 200; exit naming the log if the server dies or time runs out."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}; see {log}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop()
            raise SystemExit(f"the service did not become ready in {timeout_s:.0f} s; see {log}")
        time.sleep(0.5)


class LiveService:
    """A service process on a free loopback port; ``one(i)`` sends prompt i as a client would."""

    def __init__(self, config: Path, prompts: list[str], max_tokens: int, api_key: str, gunicorn: bool,
                 log: Path) -> None:
        self.prompts, self.max_tokens, self.log = prompts, max_tokens, log
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.proc, self.url = start_service(config, api_key, log, gunicorn=gunicorn)
        self.local = threading.local()
        wait_until_ready(self.proc, self.url, log, self.stop)
        self.one(0)  # warm-up

    def one(self, i: int) -> tuple[float | None, int, str]:
        import requests

        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        started = time.perf_counter()
        try:
            r = session.post(f"{self.url}/v1/chat/completions", headers=self.headers, timeout=600, json={
                "messages": [{"role": "user", "content": self.prompts[i]}], "max_tokens": self.max_tokens,
                "temperature": 0})
        except requests.RequestException:
            return None, 0, ""
        if r.status_code != 200:
            return None, 0, ""
        body = r.json()
        latency = time.perf_counter() - started
        return latency, body["usage"]["completion_tokens"], body["choices"][0]["message"]["content"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def table(rows: list[Row], title: str) -> str:
    head = ("mode", "requests", "conc.", "errors", "wall s", "req/s", "tok/s", "p50 s", "p95 s", "p99 s",
            "same as generate")
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        same = "-" if r.same_as_generate is None else f"{r.same_as_generate}/{r.requests}"
        lines.append(f"| {r.mode} | {r.requests} | {r.concurrency} | {r.errors} | {r.wall_s} | {r.req_per_s} | "
                     f"{r.tokens_per_s} | {r.p50_s} | {r.p95_s} | {r.p99_s} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="local Hugging Face model folder")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8", help="service max_batch_size values to compare")
    parser.add_argument("--scorer", default="blocklist",
                        help="moderation: 'blocklist' (empty list: serving overhead only), 'default' or module:factory")
    parser.add_argument("--gunicorn", action="store_true", help="run the service under gunicorn (1 worker)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (see above)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="intra-op threads for the baseline and every server (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a Hugging Face model folder (no config.json)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from gates.store import store_down, store_up

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    prompts = load_prompts(args.requests)
    print(f"model {args.model}: {args.requests} requests, {args.concurrency} concurrent clients, "
          f"max_tokens {args.max_tokens}, greedy, {args.rounds} interleaved rounds; load average before: "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="harmgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        info = store_up(tmp / "store", s3_port=0, bucket=f"bench-{secrets.token_hex(4)}")
        from gates.keys import local_key_env

        for var, value in local_key_env(tmp / "keys").items():  # a throwaway key pair for this run
            os.environ.setdefault(var, value)
        services: list[tuple[str, LiveService]] = []
        try:
            store = info.store_config()
            publish_model(store, args.model, "bench-model")
            api_key = secrets.token_hex(24)
            for batch in batches:
                config = write_config(tmp, "bench-model", store, batch=batch, max_tokens=args.max_tokens,
                                      scorer=args.scorer, torch_threads=args.torch_threads)
                mode = f"service b={batch}" + (" (gunicorn)" if args.gunicorn else "")
                services.append((mode, LiveService(config, prompts, args.max_tokens, api_key, args.gunicorn,
                                                   tmp / f"serve-b{batch}.log")))
            baseline = PlainGenerate(args.model, prompts, args.max_tokens)
            runners = [(Measure("generate (lock, 1 per call)", args.concurrency), baseline.one)]
            runners += [(Measure(mode, args.concurrency), svc.one) for mode, svc in services]
            per_round = -(-args.requests // args.rounds)
            for r in range(args.rounds):
                indices = list(range(r * per_round, min((r + 1) * per_round, args.requests)))
                for measure, one in runners:
                    measure.run(indices, one)
            reference = runners[0][0].texts
            rows = [runners[0][0].row(None)] + [m.row(reference) for m, _ in runners[1:]]
        finally:
            for _, svc in services:
                svc.stop()
            store_down(tmp / "store")

    title = (f"{args.model.name}: {args.requests} requests, {args.concurrency} clients, max_tokens "
             f"{args.max_tokens}, moderation {args.scorer}, torch {_torch_threads()} threads, {args.rounds} rounds, "
             f"load average after {os.getloadavg()[0]:.2f}")
    print("\n" + table(rows, title))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"title": title, "argv": sys.argv, "rows": [asdict(r) for r in rows]},
                                       indent=2))
    return 0 if all(r.errors == 0 for r in rows) else 1


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
