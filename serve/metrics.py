"""Prometheus metrics of one service instance (its own registry: no global state, several apps per process).

Under gunicorn with several workers, ``PROMETHEUS_MULTIPROC_DIR`` (set by serve/gunicorn.conf.py) makes every
worker write its values to files there and ``/metrics`` add them all up, whichever worker answers the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("harmgate_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("harmgate_request_duration_seconds", "Time from request to last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram("harmgate_time_to_first_token_seconds",
                                             "Request to first generated token (queueing included)",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("harmgate_queue_wait_seconds", "Time a request waited for its batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("harmgate_tokens", "Tokens processed", ["kind"], registry=r)  # prompt|completion
        self.batch_size = Histogram("harmgate_batch_size", "Requests per model.generate call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.moderation_blocks = Counter("harmgate_moderation_blocks", "Replies replaced by the refusal",
                                         ["mode"], registry=r)  # full|stream
        self.moderation_errors = Counter("harmgate_moderation_errors", "Scorer failures (replies blocked)",
                                         registry=r)
        self.moderation_score = Histogram("harmgate_moderation_score", "Toxicity score of replies",
                                          buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0), registry=r)
        self.model_ready = Gauge("harmgate_model_ready", "1 while an approved version is served",
                                 multiprocess_mode="livemin", registry=r)
        self.model_info = Gauge("harmgate_model_info", "The served version (value 1)",
                                ["name", "version", "manifest_sha256"], multiprocess_mode="livemax", registry=r)
        self.model_events = Counter("harmgate_model_events", "Hot swap and revocation events", ["event"],
                                    registry=r)  # loaded|withdrawn|load_failed
        self.registry_poll_errors = Counter("harmgate_registry_poll_errors", "Registry checks that failed",
                                            registry=r)

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
