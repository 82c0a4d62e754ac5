"""The trade-off measurement: every candidate on the same split and hardware, and the gate's selection.

Each candidate gets its task metrics, its size on disk, its p50/p95 latency at batch 1 and its throughput
at batch 32, measured in this process with one intra-op thread (what one serving replica gets by
default), so the numbers compare candidates with each other rather than promise absolute serving times.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Candidate", "measure_candidate", "directory_size_mb", "select_candidate", "SelectionResult"]


@dataclass
class Candidate:
    """One model the gate can choose: where it is, how it was made, and what it measured."""

    name: str
    method: str
    key: str
    root: str
    metrics: dict[str, float] = field(default_factory=dict)
    size_mb: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    throughput_rows_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def directory_size_mb(directory: str | Path) -> float:
    """Bytes of every file under ``directory`` (the weights, the card, the ONNX graph), in MB."""
    total = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
    return total / 1e6


def _timed(fn, x, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure_candidate(name: str, method: str, model, directory: str | Path, x: np.ndarray, y: np.ndarray,
                      class_names: list[str], *, key: str = "", root: str = "", latency_iters: int = 200,
                      throughput_batches: int = 30, info: dict[str, Any] | None = None) -> Candidate:
    """Measure one candidate (see the module doc); ``model`` has ``predict_proba`` on torch tensors."""
    import torch

    from aimass.steps.evaluate import classification_metrics

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
            proba = np.concatenate([model.predict_proba(xt[i:i + 1024]).numpy() for i in range(0, len(xt), 1024)])
            metrics, _ = classification_metrics(y, proba, class_names)
            one = xt[:1]
            for _ in range(10):
                model.predict_proba(one)
            lat = _timed(model.predict_proba, one, latency_iters)
            batch = xt[:32] if len(xt) >= 32 else xt.repeat(math.ceil(32 / max(1, len(xt))), *([1] * (xt.dim() - 1)))[:32]
            for _ in range(3):
                model.predict_proba(batch)
            t0 = time.perf_counter()
            for _ in range(throughput_batches):
                model.predict_proba(batch)
            throughput = 32 * throughput_batches / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    return Candidate(name=name, method=method, key=key, root=root, metrics={k: float(v) for k, v in metrics.items()},
                     size_mb=directory_size_mb(directory), latency_p50_ms=float(np.percentile(lat, 50)),
                     latency_p95_ms=float(np.percentile(lat, 95)), throughput_rows_s=float(throughput), info=info or {})


@dataclass
class SelectionResult:
    """The gate's choice among candidates, with one line of reasons per candidate."""

    chosen: Candidate | None
    reasons: dict[str, list[str]]
    passed: dict[str, bool]


def select_candidate(candidates: list[Candidate], *, metric: str, mode: str = "max", baseline: str = "original",
                     max_latency_ms: float | None = None, max_size_mb: float | None = None,
                     max_metric_drop: float | None = None, thresholds: list[Any] = (),
                     select: str = "best-under-constraints", prefer: str = "size") -> SelectionResult:
    """Apply the constraints to every candidate and pick one.

    ``max_metric_drop`` is measured against the ``baseline`` candidate (the uncompressed parent) on ``metric``.
    ``select``: ``best-under-constraints`` picks the smallest (``prefer: size``) or fastest (``prefer: latency``)
    candidate that passes, ties broken by the better metric; ``best-metric`` picks the best metric among those
    that pass. ``thresholds`` are the gate's absolute thresholds (:class:`~aimass.spec.configs.register.Threshold`).
    """
    base = next((c for c in candidates if c.name == baseline), None)
    reasons: dict[str, list[str]] = {}
    passed: dict[str, bool] = {}
    for c in candidates:
        r: list[str] = []
        ok = True
        for t in thresholds:
            t_ok, why = t.check(c.metrics.get(t.metric))
            if not t_ok:
                ok = False
                r.append(why)
        if max_latency_ms is not None and c.latency_p50_ms > max_latency_ms:
            ok = False
            r.append(f"p50 latency {c.latency_p50_ms:.3f} ms > max {max_latency_ms} ms")
        if max_size_mb is not None and c.size_mb > max_size_mb:
            ok = False
            r.append(f"size {c.size_mb:.3f} MB > max {max_size_mb} MB")
        if max_metric_drop is not None and base is not None and c is not base:
            new, old = c.metrics.get(metric), base.metrics.get(metric)
            if new is None or old is None:
                ok = False
                r.append(f"{metric}: not measured")
            else:
                drop = (old - new) if mode == "max" else (new - old)
                if drop > max_metric_drop:
                    ok = False
                    r.append(f"{metric} drops {drop:.4f} vs {baseline} > max {max_metric_drop}")
        if ok:
            r.append("passes")
        reasons[c.name], passed[c.name] = r, ok
    ok_list = [c for c in candidates if passed[c.name]]
    if not ok_list:
        return SelectionResult(None, reasons, passed)
    sign = -1.0 if mode == "max" else 1.0

    def metric_key(c: Candidate) -> float:
        v = c.metrics.get(metric)
        return sign * v if v is not None else math.inf

    if select == "best-metric":
        chosen = min(ok_list, key=lambda c: (metric_key(c), c.size_mb))
    elif prefer == "latency":
        chosen = min(ok_list, key=lambda c: (c.latency_p50_ms, metric_key(c)))
    else:
        chosen = min(ok_list, key=lambda c: (c.size_mb, metric_key(c)))
    return SelectionResult(chosen, reasons, passed)
