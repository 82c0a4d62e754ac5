"""The colocated model copies of one ingress replica (``colocate: true``).

Each copy loads in a background thread while the route keeps calling its model deployment, which has
already passed its readiness check; so a rollout never waits on the ingress, and a copy that cannot
load costs latency, not availability. A failed load is retried with exponential backoff for as long
as a route still wants that version (a registry or artifact-store hiccup must not pin the replica on
the slow path until it restarts). Copies that no route wants any more are dropped, so the LRU of
versions is the routes themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["LocalCopies"]

log = logging.getLogger("aimass.serving")


@dataclass
class _Failure:
    error: str
    attempts: int
    retry_at: float  # time.monotonic() of the next attempt


class LocalCopies:
    """Keyed model copies: ``want(keys)`` loads what is missing in the background and drops the rest;
    ``get(key)`` is the loaded copy or None (the caller then uses its fallback path).

    Args:
        load: key -> loaded model; may raise (the load is then retried).
        retry_s: delay before the first retry of a failed load; doubles per failure.
        max_retry_s: the longest delay between two attempts.
    """

    def __init__(self, load: Callable[[Any], Any], *, retry_s: float = 5.0, max_retry_s: float = 300.0,
                 name: Callable[[Any], str] = str) -> None:
        self._load = load
        self._name = name
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self._lock = threading.Lock()
        self._copies: dict[Hashable, Any] = {}
        self._wanted: set[Hashable] = set()
        self._loading: set[Hashable] = set()
        self._failed: dict[Hashable, _Failure] = {}
        self._timers: dict[Hashable, threading.Timer] = {}

    def want(self, keys: Iterable[Hashable]) -> set[Hashable]:
        """Make these the wanted copies: start loading the missing ones, drop the others.

        Returns the keys of the copies dropped (so the caller can drop what it built on them)."""
        wanted = set(keys)
        with self._lock:
            self._wanted = wanted
            dropped = {k for k in self._copies if k not in wanted}
            for k in dropped:
                del self._copies[k]
            for k in [k for k in self._failed if k not in wanted]:
                del self._failed[k]
            for k in [k for k in self._timers if k not in wanted]:
                self._timers.pop(k).cancel()
            todo = [k for k in wanted if k not in self._copies and k not in self._loading and k not in self._failed]
            self._loading.update(todo)
        for k in todo:
            self._spawn(k)
        return dropped

    def get(self, key: Hashable) -> Any:
        return self._copies.get(key)

    def status(self, key: Hashable) -> dict[str, Any]:
        """``{"state": "loaded" | "loading" | "failed" | "absent", ...}``; a failure also gives the
        error, the number of attempts and the seconds to the next one."""
        with self._lock:
            if key in self._copies:
                return {"state": "loaded"}
            f = self._failed.get(key)
            if f is not None:
                return {"state": "failed", "error": f.error, "attempts": f.attempts,
                        "retry_in_s": round(max(0.0, f.retry_at - time.monotonic()), 1)}
            return {"state": "loading" if key in self._loading else "absent"}

    def close(self) -> None:
        """Cancel pending retries (the copies themselves go with the replica)."""
        with self._lock:
            self._wanted = set()
            for t in self._timers.values():
                t.cancel()
            self._timers.clear()

    # -- internals ---------------------------------------------------------------------------------
    def _spawn(self, key: Hashable) -> None:
        threading.Thread(target=self._run, args=(key,), daemon=True, name=f"aimass-load-{self._name(key)}").start()

    def _run(self, key: Hashable) -> None:
        try:
            copy = self._load(key)
        except Exception as e:  # noqa: BLE001 - the route keeps its fallback; retried below
            with self._lock:
                self._loading.discard(key)
                if key not in self._wanted:
                    return
                prev = self._failed.get(key)
                attempts = (prev.attempts if prev else 0) + 1
                delay = min(self.max_retry_s, self.retry_s * 2 ** (attempts - 1))
                self._failed[key] = _Failure(f"{type(e).__name__}: {e}", attempts, time.monotonic() + delay)
                timer = threading.Timer(delay, self._retry, args=(key,))
                timer.daemon = True
                self._timers[key] = timer
                timer.start()
            log.warning("could not load a colocated copy of %s (attempt %d: %s: %s); its model deployment keeps "
                        "answering; next attempt in %.0f s", self._name(key), attempts, type(e).__name__, e, delay)
            return
        with self._lock:
            self._loading.discard(key)
            self._failed.pop(key, None)
            if key in self._wanted:  # not retired while it loaded
                self._copies[key] = copy
                log.info("%s is now answered from the ingress (colocated)", self._name(key))

    def _retry(self, key: Hashable) -> None:
        with self._lock:
            self._timers.pop(key, None)
            if key not in self._wanted or key in self._copies or key in self._loading:
                return
            self._loading.add(key)  # the failure record stays (attempt count) until a load succeeds
        self._spawn(key)
