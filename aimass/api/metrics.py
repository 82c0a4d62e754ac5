"""Prometheus metrics of the control-plane API, exposed at ``GET /metrics`` (token required).

One registry per app (not the process-global default), so several apps in one process, as in the
tests, keep their own counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ApiMetrics", "CONTENT_TYPE_LATEST"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    """The ``aimass_api_*`` metrics of one app."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("aimass_api_requests", "HTTP requests answered, by route template and status code.",
                                ["method", "route", "code"], registry=r)
        self.latency = Histogram("aimass_api_request_duration_seconds", "Time to answer, by route template.",
                                 ["method", "route"], buckets=_BUCKETS, registry=r)
        self.submissions = Counter("aimass_api_runs_submitted", "Pipeline runs accepted and handed to the backend.", registry=r)
        self.auth_failures = Counter("aimass_api_auth_failures", "Requests with a missing or invalid bearer token.", registry=r)
        self.rate_limited = Counter("aimass_api_rate_limited", "Requests refused by an identity's rate limit.", registry=r)

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        # Route templates, never raw paths: run ids would make one time series per run.
        self.requests.labels(method, route, str(code)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
