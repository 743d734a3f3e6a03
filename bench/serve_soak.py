"""Soak test of the gated service: many concurrent clients for minutes on loopback; zero errors, bounded memory.

    python bench/serve_soak.py --duration 240 --clients 32            # the tiny random Llama, built in code
    python bench/serve_soak.py --model models/HuggingFaceTB/SmolLM2-135M-Instruct --duration 300

A private SeaweedFS is started, the model published and approved in it, and the service started as in production
(gunicorn, ``serve/gunicorn.conf.py``; ``--dev`` for ``python -m serve.runner``). Then ``--clients`` threads, each
with its own keep-alive session, send requests back to back for ``--duration`` seconds, a mix of what clients do:

    chat (JSON) 70%, chat (stream) 15%, /v1/models 5%, /readyz 5%, an invalid body (must be 400) 5%

An *error* is any unexpected status, a broken stream (no ``[DONE]``), a timeout or a connection failure. Every
second the resident memory (RSS) of the server's whole process tree is sampled. Memory counts as bounded when the
RSS of the last fifth of the run is within ``--max-growth-mib`` of the RSS after warm-up (the second fifth) and the
slope over the second half is flat. A table is printed and everything (with the RSS time series) written as JSON to
``--out`` (default bench/results/serve_soak-<model>.json). Exit status 1 if there was any error or memory grew.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from serve_load import (load_prompts, publish_model, start_service, wait_until_ready,  # noqa: E402
                        write_config)

MIX = (("chat", 70), ("stream", 15), ("models", 5), ("readyz", 5), ("invalid", 5))


class Server:
    """The service in its own process (group), stopped with SIGTERM like a supervisor would."""

    def __init__(self, config: Path, api_key: str, log: Path, *, dev: bool, workers: int) -> None:
        self.log = log
        self.proc, self.url = start_service(config, api_key, log, gunicorn=not dev, workers=workers)
        wait_until_ready(self.proc, self.url, log, self.stop)

    def rss_bytes(self) -> int:
        """RSS of the server and every process under it (gunicorn master + workers)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Client(threading.Thread):
    def __init__(self, idx: int, url: str, api_key: str, prompts: list[str], max_tokens: int, until: float,
                 results: list, lock: threading.Lock) -> None:
        super().__init__(name=f"client-{idx}", daemon=True)
        self.url, self.prompts, self.max_tokens, self.until = url, prompts, max_tokens, until
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.random = random.Random(idx)
        self.results, self.lock = results, lock

    def run(self) -> None:
        import requests

        session = requests.Session()
        kinds, weights = zip(*MIX)
        while time.monotonic() < self.until:
            kind = self.random.choices(kinds, weights)[0]
            started = time.perf_counter()
            try:
                ok, detail = self.one(session, kind)
            except requests.RequestException as err:
                ok, detail = False, type(err).__name__
            with self.lock:
                self.results.append((kind, time.perf_counter() - started, ok, detail, time.monotonic()))

    def one(self, session, kind: str) -> tuple[bool, str]:
        body = {"messages": [{"role": "user", "content": self.random.choice(self.prompts)}],
                "max_tokens": self.max_tokens, "temperature": self.random.choice([0, 0, 0.7])}
        if kind == "chat":
            r = session.post(f"{self.url}/v1/chat/completions", json=body, headers=self.headers, timeout=120)
            ok = r.status_code == 200 and r.json()["object"] == "chat.completion"
            return ok, str(r.status_code)
        if kind == "stream":
            with session.post(f"{self.url}/v1/chat/completions", json={**body, "stream": True},
                              headers=self.headers, timeout=120, stream=True) as r:
                lines = [line for line in r.iter_lines() if line]
            return r.status_code == 200 and lines[-1:] == [b"data: [DONE]"], str(r.status_code)
        if kind == "models":
            r = session.get(f"{self.url}/v1/models", headers=self.headers, timeout=60)
            return r.status_code == 200, str(r.status_code)
        if kind == "readyz":
            r = session.get(f"{self.url}/readyz", timeout=60)
            return r.status_code == 200, str(r.status_code)
        r = session.post(f"{self.url}/v1/chat/completions", headers=self.headers, timeout=60,
                         json={"messages": [{"role": "wizard", "content": 1}]})
        return r.status_code == 400, str(r.status_code)


def quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    q = statistics.quantiles(values, n=100, method="inclusive")
    return round(q[49], 3), round(q[94], 3), round(q[98], 3)


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time (MiB per minute)."""
    if len(samples) < 3:
        return 0.0
    ts = [t for t, _ in samples]
    ms = [b / 2**20 for _, b in samples]
    return round(statistics.linear_regression(ts, ms).slope * 60, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the tiny random Llama)")
    parser.add_argument("--duration", type=float, default=240, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--dev", action="store_true", help="python -m serve.runner instead of gunicorn")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--max-growth-mib", type=float, default=64.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from gates.store import store_down, store_up

    prompts = load_prompts(200)
    results: list[tuple[str, float, bool, str, float]] = []
    samples: list[tuple[float, int]] = []
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="harmgate-soak-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from align.tiny import save_tiny_model

            model = save_tiny_model(tmp / "tiny-random-llama")
        name = "soak-" + model.name.lower().replace("_", "-")[:40]
        info = store_up(tmp / "store", s3_port=0, bucket=f"soak-{secrets.token_hex(4)}")
        from gates.keys import local_key_env

        for var, value in local_key_env(tmp / "keys").items():  # a throwaway key pair for this run
            os.environ.setdefault(var, value)
        server = None
        try:
            publish_model(info.store_config(), model, name)
            api_key = secrets.token_hex(24)
            config = write_config(tmp, name, info.store_config(), batch=8, max_tokens=args.max_tokens,
                                  scorer="blocklist", torch_threads=args.torch_threads)
            server = Server(config, api_key, tmp / "serve.log", dev=args.dev, workers=args.workers)
            print(f"soak: {model.name} served by {'serve.runner' if args.dev else f'gunicorn x{args.workers}'} at "
                  f"{server.url}; {args.clients} clients for {args.duration:.0f} s; load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            start = time.monotonic()
            until = start + args.duration
            clients = [Client(i, server.url, api_key, prompts, args.max_tokens, until, results, lock)
                       for i in range(args.clients)]
            for c in clients:
                c.start()
            while time.monotonic() < until:
                samples.append((time.monotonic() - start, server.rss_bytes()))
                time.sleep(1.0)
            for c in clients:
                c.join(timeout=180)
            samples.append((time.monotonic() - start, server.rss_bytes()))
            stuck = sum(c.is_alive() for c in clients)
            wall = time.monotonic() - start
            status = server.stop()
            server = None
            shutdown_log = (tmp / "serve.log").read_text(errors="replace")
        finally:
            if server is not None:
                server.stop()
            store_down(tmp / "store")

    errors = [(k, d) for k, _, ok, d, _ in results if not ok]
    by_kind = Counter(k for k, *_ in results)
    chat_lat = [lat for k, lat, ok, *_ in results if ok and k == "chat"]
    stream_lat = [lat for k, lat, ok, *_ in results if ok and k == "stream"]
    n = len(samples)
    warm = [b for _, b in samples[n // 5: 2 * n // 5]] or [samples[0][1]]
    tail = [b for _, b in samples[4 * n // 5:]] or [samples[-1][1]]
    growth_mib = round((statistics.median(tail) - statistics.median(warm)) / 2**20, 1)
    slope = slope_mib_per_min(samples[n // 2:])
    bounded = growth_mib <= args.max_growth_mib
    tracebacks = shutdown_log.count("Traceback")
    summary = {
        "model": model.name, "server": "serve.runner" if args.dev else f"gunicorn x{args.workers} (gthread)",
        "clients": args.clients, "duration_s": round(wall, 1), "max_tokens": args.max_tokens,
        "requests": len(results), "req_per_s": round(len(results) / wall, 2), "by_kind": dict(by_kind),
        "errors": len(errors), "errors_by_kind": dict(Counter(f"{k}:{d}" for k, d in errors)),
        "stuck_clients": stuck, "server_exit_status": status, "server_log_tracebacks": tracebacks,
        "chat_latency_p50_p95_p99_s": quantiles(chat_lat), "stream_latency_p50_p95_p99_s": quantiles(stream_lat),
        "rss_mib": {"first": round(samples[0][1] / 2**20, 1), "after_warmup_median": round(statistics.median(warm)
                    / 2**20, 1), "max": round(max(b for _, b in samples) / 2**20, 1),
                    "last_fifth_median": round(statistics.median(tail) / 2**20, 1), "growth": growth_mib,
                    "slope_second_half_mib_per_min": slope},
        "memory_bounded": bounded, "max_growth_mib": args.max_growth_mib,
        "load_average_after": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(), "argv": sys.argv[1:],
    }
    rows = [("requests", f"{summary['requests']} ({summary['req_per_s']}/s) {dict(by_kind)}"),
            ("errors", f"{summary['errors']} {summary['errors_by_kind'] or ''}"),
            ("chat latency p50/p95/p99 s", summary["chat_latency_p50_p95_p99_s"]),
            ("stream latency p50/p95/p99 s", summary["stream_latency_p50_p95_p99_s"]),
            ("RSS MiB first / after warm-up / max / last fifth", f"{summary['rss_mib']['first']} / "
             f"{summary['rss_mib']['after_warmup_median']} / {summary['rss_mib']['max']} / "
             f"{summary['rss_mib']['last_fifth_median']}"),
            ("RSS growth after warm-up (MiB), slope 2nd half (MiB/min)", f"{growth_mib}, {slope}"),
            ("memory bounded", bounded), ("stuck clients, server exit status, tracebacks in log",
                                          f"{stuck}, {status}, {tracebacks}")]
    print(f"\n### soak: {summary['model']}, {summary['server']}, {args.clients} clients, {summary['duration_s']} s\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    out = args.out or REPO_ROOT / "bench" / "results" / f"serve_soak-{model.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    step = max(1, len(samples) // 300)
    out.write_text(json.dumps({**summary, "rss_series": [(round(t, 1), round(b / 2**20, 1))
                                                         for t, b in samples[::step]]}, indent=2))
    print(f"\nwritten: {out}")
    ok = not errors and bounded and not stuck and tracebacks == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
