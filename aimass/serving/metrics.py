"""Prometheus metrics of the serving path, per model and version, exposed at ``GET /metrics``.

Each ingress replica keeps its own registry; model replicas report batch sizes and cache events back
with every answer, so one scrape of an ingress shows the whole path for the traffic it carried. Ray
Serve's own metrics (replicas, queue lengths, processing latency) are exported by Ray's metrics agent
as usual.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServingMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServingMetrics:
    """The ``aimass_serve_*`` metrics of one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("aimass_serve_requests", "Inference requests answered, by HTTP status code.",
                                ["model", "version", "code"], registry=r)
        self.errors = Counter("aimass_serve_errors", "Failed inference requests, by kind (client, auth, overload, timeout, server).",
                              ["model", "version", "kind"], registry=r)
        self.latency = Histogram("aimass_serve_request_latency_seconds", "Ingress-to-answer latency of inference requests.",
                                 ["model", "version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("aimass_serve_batch_size", "Rows in the model call each request was part of.",
                                    ["model", "version"], buckets=_BATCH_BUCKETS, registry=r)
        self.queue = Gauge("aimass_serve_queue_length", "Requests accepted by this ingress and waiting for their model.",
                           ["model", "version"], registry=r)
        self.cache = Counter("aimass_serve_model_cache", "Multiplexed model cache events: hit, load, evict.",
                             ["model", "version", "event"], registry=r)
        self.rollbacks = Counter("aimass_serve_rollbacks", "Canary versions rolled back automatically.",
                                 ["model", "version"], registry=r)
        self.canary_share = Gauge("aimass_serve_canary_traffic_share", "Configured share of traffic sent to the challenger.",
                                  ["model", "version"], registry=r)

        self._children: dict[tuple, object] = {}

    def child(self, metric, *labels: str):
        """``metric.labels(*labels)``, cached: the hot path skips prometheus_client's label checks and
        lock. The cache stays small because label values come only from what is deployed."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def render(self) -> bytes:
        return generate_latest(self.registry)
