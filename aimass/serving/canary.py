"""The canary verdict: a sliding window of the challenger's outcomes and latencies.

Pure Python (no Ray): the ingress feeds it every challenger request; once the window holds
``minRequests`` outcomes, an error rate over ``maxErrorRate`` or a p99 latency over
``maxP99LatencyMs`` is a breach and the challenger is rolled back.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["CanaryMonitor", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    breached: bool
    reason: str
    requests: int
    error_rate: float
    p99_ms: float | None

    def to_dict(self) -> dict:
        return {"breached": self.breached, "reason": self.reason, "requests": self.requests,
                "error_rate": round(self.error_rate, 6), "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3)}


class CanaryMonitor:
    """Window of (time, ok, latency) for one challenger version.

    Args:
        max_error_rate: breach when errors / requests > this.
        max_p99_latency_ms: breach when the window's p99 latency (ms) > this; None disables.
        window_s: the window length.
        min_requests: no verdict before this many requests in the window.
        clock: injectable for tests.

    Example:
        >>> m = CanaryMonitor(max_error_rate=0.1, max_p99_latency_ms=None, window_s=60, min_requests=3)
        >>> for ok in (True, False, False):
        ...     v = m.record(ok, 0.01)
        >>> v.breached, v.reason.split(":")[0]
        (True, 'error rate')
    """

    def __init__(self, max_error_rate: float, max_p99_latency_ms: float | None, window_s: float, min_requests: int,
                 clock=time.monotonic, max_samples: int = 100_000) -> None:
        self.max_error_rate = max_error_rate
        self.max_p99_latency_ms = max_p99_latency_ms
        self.window_s = window_s
        self.min_requests = min_requests
        self._clock = clock
        self._events: deque[tuple[float, bool, float]] = deque(maxlen=max_samples)
        self.tripped: Verdict | None = None

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        ev = self._events
        while ev and ev[0][0] < cutoff:
            ev.popleft()

    def record(self, ok: bool, latency_s: float) -> Verdict:
        """Add one outcome; returns the current verdict (sticky once breached)."""
        now = self._clock()
        self._events.append((now, bool(ok), float(latency_s)))
        v = self.verdict(now)
        if v.breached and self.tripped is None:
            self.tripped = v
        return self.tripped or v

    def verdict(self, now: float | None = None) -> Verdict:
        now = self._clock() if now is None else now
        self._trim(now)
        n = len(self._events)
        if n == 0:
            return Verdict(False, "no traffic yet", 0, 0.0, None)
        errors = sum(1 for _, ok, _ in self._events if not ok)
        rate = errors / n
        lats = sorted(lat for _, _, lat in self._events)
        p99 = lats[min(n - 1, max(0, math.ceil(0.99 * n) - 1))] * 1000.0
        if n < self.min_requests:
            return Verdict(False, f"{n}/{self.min_requests} requests in the window", n, rate, p99)
        if rate > self.max_error_rate:
            return Verdict(True, f"error rate {rate:.3f} > maxErrorRate {self.max_error_rate} over {n} requests", n, rate, p99)
        if self.max_p99_latency_ms is not None and p99 > self.max_p99_latency_ms:
            return Verdict(True, f"p99 latency {p99:.1f} ms > maxP99LatencyMs {self.max_p99_latency_ms} over {n} requests", n, rate, p99)
        return Verdict(False, "healthy", n, rate, p99)
