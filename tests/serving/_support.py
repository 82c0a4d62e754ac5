"""Helpers of the serving tests: the cluster handle, a model registry helper, HTTP clients, a bounded
load loop on loopback, and a process killer that ends exactly one cluster's processes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.procs import kill_owned


def gcs_port() -> int:
    """The serving cluster's GCS port: $AIMASS_TEST_RAY_PORT when set, else a free one (never a fixed port)."""
    from tests.ports import free_port

    return int(os.environ.get("AIMASS_TEST_RAY_PORT") or free_port())


def cluster_markers(home: Path) -> list[str]:
    """What names the serving cluster's own processes: its private home and Ray temp dir (never its port)."""
    from aimass.orchestrator.ray_runtime import ray_temp_dir

    return [str(home), ray_temp_dir(home)]


def kill_cluster(markers: list[str]) -> list[int]:
    """SIGKILL the processes whose command line names one of ``markers`` (private dirs), and their descendants.

    Only private paths identify a cluster's processes: a port is not one (if the cluster failed to
    start because someone else holds the port, the holder's processes name that port too).
    """
    return kill_owned(markers)


@dataclass
class Cluster:
    home: Path
    address: str
    http_port: int
    tracking_uri: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Registry:
    def __init__(self, cluster: Cluster) -> None:
        from aimass.tracking import Tracker

        self.cluster = cluster
        self.tracker = Tracker(cluster.tracking_uri)
        self.exp = self.tracker.ensure_experiment("serving-tests", artifact_location=str(cluster.home / "mlartifacts"))
        self._n = 0

    def register(self, name: str, input_shape: list[int] | None = None, num_classes: int = 3, alias: str | None = None,
                 broken: bool = False, seed: int = 0, class_names: list[str] | None = None) -> str:
        """Build, save, log and register a small MLP; returns the version. ``broken``: weights that do not fit the card."""
        import torch

        from aimass.models.io import save_model
        from aimass.models.registry import ModelCard, build_model

        input_shape = input_shape or [8]
        self._n += 1
        d = self.cluster.home / "models" / f"{name}-{self._n}"
        torch.manual_seed(seed)
        card = ModelCard(name="mlp", input_shape=input_shape, num_classes=num_classes, args={"hidden": [16], "dropout": 0.0},
                         class_names=class_names or [f"c{i}" for i in range(num_classes)])
        save_model(build_model(card), d)
        if broken:  # a card promising a wider network than the weights hold: strict loading fails
            import json

            doc = json.loads((d / "card.json").read_text())
            doc["args"]["hidden"] = [32]
            (d / "card.json").write_text(json.dumps(doc))
        run = self.tracker.start_run(self.exp, f"{name}-{self._n}")
        uri = self.tracker.log_model(run, d, input_shape, num_classes)
        self.tracker.end_run(run)
        version = self.tracker.register(uri, name, run_id=run)
        if alias:
            self.tracker.set_alias(name, alias, version)
        return version

    def tags(self, name: str, version: str) -> dict[str, str]:
        return next(v["tags"] for v in self.tracker.model_versions(name) if v["version"] == str(version))


def http_client(cluster: Cluster, token: str | None, **kw: Any):
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return httpx.Client(base_url=cluster.url, headers=headers, timeout=kw.pop("timeout", 30.0), **kw)


class LoadLoop:
    """Steady, bounded inference load on loopback from a background thread.

    Records each request's outcome without retry (``raw``) and after one client retry (``final``), plus
    the version that answered. Stops on :meth:`stop` or after ``max_s`` seconds. Nothing is hidden:
    every exception (HTTP, JSON, a missing key, anything else) is recorded as a failed request in
    ``errors``, an exception that ends the thread is kept in ``crash`` and re-raised by :meth:`wait_for`
    and :meth:`stop`, and :meth:`wait_for` raises when the answers do not come in time.
    """

    def __init__(self, cluster: Cluster, token: str, path: str, payload: dict, pause_s: float = 0.01, max_s: float = 180.0) -> None:
        import threading

        self.cluster, self.token, self.path, self.payload = cluster, token, path, payload
        self.pause_s, self.max_s = pause_s, max_s
        self.raw: list[int] = []
        self.final: list[int] = []
        self.versions: list[str] = []
        self.errors: list[str] = []
        self.crash: BaseException | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LoadLoop":
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(timeout=60)
        if exc[0] is None:  # do not mask the body's own failure
            self._raise_crash()

    def _one(self, c) -> tuple[int, str | None]:
        import httpx

        try:
            r = c.post(self.path, json=self.payload)
        except httpx.HTTPError as e:
            self.errors.append(f"{type(e).__name__}: {e}")
            return 0, None
        if r.status_code != 200:
            self.errors.append(f"{r.status_code}: {r.text[:300]}")
            return r.status_code, None
        try:
            return 200, str(r.json()["model_version"])
        except Exception as e:  # noqa: BLE001 - a 200 without a readable answer is a failed request
            self.errors.append(f"200 with a bad body ({type(e).__name__}: {e}): {r.text[:300]}")
            return -1, None

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        try:
            with http_client(self.cluster, self.token, timeout=30.0) as c:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    code, v = self._one(c)
                    self.raw.append(code)
                    if code != 200:  # one client retry, as the SDK client does
                        time.sleep(0.05)
                        code, v = self._one(c)
                    self.final.append(code)
                    if v is not None:
                        self.versions.append(v)
                    time.sleep(self.pause_s)
        except BaseException as e:  # noqa: BLE001 - kept and re-raised in the test's thread
            self.errors.append(f"the load loop crashed: {type(e).__name__}: {e}")
            self.crash = e

    def _raise_crash(self) -> None:
        if self.crash is not None:
            raise AssertionError(f"the load loop crashed after {len(self.final)} requests") from self.crash

    def wait_for(self, n: int, timeout_s: float = 60.0) -> None:
        """Until ``n`` requests have been answered (after their retry); raises when that takes longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(self.final) < n:
            self._raise_crash()
            if not self._t.is_alive():
                raise AssertionError(f"the load loop stopped after {len(self.final)} of {n} requests (max_s={self.max_s})")
            if time.monotonic() >= deadline:
                raise AssertionError(f"only {len(self.final)} of {n} requests answered in {timeout_s}s; "
                                     f"last errors: {self.errors[-3:]}")
            time.sleep(0.05)
        self._raise_crash()

    def mark(self) -> int:
        """How many requests have been answered so far (for :meth:`answered_since`)."""
        return len(self.final)

    def answered_since(self, mark: int) -> int:
        return len(self.final) - mark

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=60)
        self._raise_crash()

    @property
    def availability(self) -> float:
        return sum(1 for c in self.raw if c == 200) / max(1, len(self.raw))

    @property
    def failed_after_retry(self) -> int:
        return sum(1 for c in self.final if c != 200)


def wait_until(pred, timeout_s: float, what: str, every_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
