"""Step cache keys: a hash of the step's type, config, inputs (their own keys), code version and seed.

An unchanged step in a re-run finds its key in ``cache/<key>.json`` and reuses the outputs stored there,
as long as the artifacts those outputs point at still exist.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

__all__ = ["cache_key", "lookup", "store_entry", "outputs_available", "CACHE_FORMAT"]

CACHE_FORMAT = "1"


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(*, step_type: str, config: dict[str, Any], inputs: dict[str, str], code_version: str, seed: int) -> str:
    """``inputs`` maps input name -> a stable identity of the upstream output (its step's cache key + output name)."""
    payload = {"f": CACHE_FORMAT, "type": step_type, "config": config, "inputs": inputs, "code": code_version, "seed": seed}
    return hashlib.sha256(_canon(payload).encode()).hexdigest()[:32]


def _key(k: str) -> str:
    return f"cache/{k}.json"


def _artifact_keys(obj: Any, root: str) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        if isinstance(obj.get("key"), str) and obj.get("root") == root:
            out.append(obj["key"])
        for v in obj.values():
            out.extend(_artifact_keys(v, root))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(_artifact_keys(v, root))
    return out


def outputs_available(store, outputs: dict[str, Any]) -> bool:
    """Every artifact the outputs point at (in this store) still exists."""
    return all(store.exists(k) for k in _artifact_keys(outputs, store.root_uri))


def lookup(store, key: str) -> dict[str, Any] | None:
    if not store.exists(_key(key)):
        return None
    try:
        entry = json.loads(store.get_bytes(_key(key)))
    except ValueError:
        return None
    return entry if outputs_available(store, entry.get("outputs", {})) else None


def store_entry(store, key: str, *, outputs: dict[str, Any], run_id: str, step: str, mlflow_run_id: str | None = None) -> None:
    """Record a step's outputs under its key, with the run (and its MLflow run) that produced them."""
    entry = {"outputs": outputs, "run_id": run_id, "step": step, "created": time.time()}
    if mlflow_run_id:
        entry["mlflow_run_id"] = mlflow_run_id  # a cached re-run copies this run's metrics and plot links
    store.put_bytes(_key(key), _canon(entry).encode())
