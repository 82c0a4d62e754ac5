"""Faults under steady load on real Ray Serve: a model replica, the ingress replica and Serve's proxy are
each SIGKILLed while 8 ``aimass.Client`` threads send requests. The client (retry with backoff, then the
ingress replicas' direct URLs) must see 0 failed requests; a plain loop without retry records what a
naive caller sees. Processes are found through this test cluster's own ``ray.util.state``."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.serving._support import LoadLoop, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP, N_IN = "fa", 8


class ClientLoad:
    """``width`` threads, each with its own ``aimass.Client``, calling infer in a bounded loop."""

    def __init__(self, url: str, token: str, width: int = 8, max_s: float = 300.0) -> None:
        self.url, self.token, self.width, self.max_s = url, token, width, max_s
        self.ok = 0
        self.failed: list[str] = []
        self.slowest_s = 0.0
        self.most_urls = 0  # the proxy's URL plus the direct URLs a client learned
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(width)]

    def _run(self) -> None:
        from aimass.serving.client import Client

        x = np.linspace(-1, 1, N_IN, dtype=np.float32)[None, :]
        deadline = time.monotonic() + self.max_s
        with Client(self.url, token=self.token, retry_budget_s=60, retries=40, discover_every_s=2.0) as c:
            while not self._stop.is_set() and time.monotonic() < deadline:
                t = time.perf_counter()
                try:
                    c.infer("digits", x)
                except Exception as e:  # noqa: BLE001 - counted: the goal is none
                    with self._lock:
                        self.failed.append(f"{type(e).__name__}: {e}"[:300])
                else:
                    with self._lock:
                        self.ok += 1
                        self.most_urls = max(self.most_urls, len(c.urls))
                        self.slowest_s = max(self.slowest_s, time.perf_counter() - t)
                time.sleep(0.005)

    def __enter__(self) -> ClientLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def wait_for(self, n: int, timeout_s: float = 90.0) -> None:
        wait_until(lambda: self.ok >= n, timeout_s, f"{n} answers (failed: {self.failed[:3]})")


ADDRESS: list[str] = []  # this test cluster's GCS address (never another cluster on the host)


def _alive_actors(prefix: str) -> list[tuple[str, int]]:
    from ray.util.state import list_actors

    actors = list_actors(address=ADDRESS[0], filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
    return sorted((a.name, a.pid) for a in actors if (a.name or "").startswith(prefix) and a.pid)


def _kill(prefix: str) -> int:
    actors = _alive_actors(prefix)
    assert actors, f"no live actor named {prefix}*"
    _, pid = actors[0]
    os.kill(pid, signal.SIGKILL)
    return pid


def _healthy() -> bool:
    from ray import serve

    st = serve.status()
    app = st.applications.get(APP)
    if app is None or str(app.status).rsplit(".", 1)[-1] != "RUNNING":
        return False
    return all(str(d.status).rsplit(".", 1)[-1] == "HEALTHY" for d in app.deployments.values())


def test_killing_a_model_replica_the_ingress_replica_and_the_proxy_fails_no_client_request(serving_cluster, registry, token):
    from aimass.serving.config import (
        DeploymentSpec,
        IngressSpec,
        ModelSpec,
        ServeConfig,
    )
    from aimass.serving.deploy import deploy, shutdown

    ADDRESS[:] = [serving_cluster.address]
    registry.register("fadigits", [N_IN], 3, alias="champion")  # its own registered name: other modules register "digits"
    small = {"num_cpus": 0.1, "health_check_period_s": 1.0, "health_check_timeout_s": 5.0, "graceful_shutdown_timeout_s": 2.0}
    cfg = ServeConfig(name=APP, route_prefix=f"/{APP}", ingress=IngressSpec(num_cpus=0.1),
                      models=[ModelSpec(name="digits", model_uri="models:/fadigits@champion", deployment=DeploymentSpec(replicas=2, **small))],
                      auth={"tokenFile": str(serving_cluster.home / "serve-token")}, rollout_timeout_s=120)
    # fault -> (actor name prefix, how many run when healthy)
    faults = {"model replica": (f"SERVE_REPLICA::{APP}#digits--", 2), "ingress replica": (f"SERVE_REPLICA::{APP}#Ingress#", 1),
              "proxy": ("SERVE_PROXY_ACTOR", 1)}
    figures: dict[str, dict] = {}
    payload = {"inputs": [{"name": "input", "shape": [1, N_IN], "datatype": "FP32", "data": [0.5] * N_IN}]}
    try:
        st = deploy(cfg)
        assert st["status"] == "RUNNING"
        url = f"{serving_cluster.url}/{APP}"
        with ClientLoad(url, token) as load, LoadLoop(serving_cluster, token, f"/{APP}/v2/models/digits/infer", payload,
                                                      pause_s=0.01, max_s=300) as naive:
            load.wait_for(50)
            for fault, (prefix, count) in faults.items():
                ok0, failed0, raw0 = load.ok, len(load.failed), len(naive.raw)
                naive_bad0 = sum(1 for c in naive.raw if c != 200)
                killed = _kill(prefix)
                time.sleep(1.0)

                def replaced(p=prefix, n=count, k=killed) -> bool:
                    pids = [pid for _, pid in _alive_actors(p)]
                    return len(pids) >= n and k not in pids and _healthy()

                wait_until(replaced, 120, f"the {fault} to be replaced")
                load.wait_for(load.ok + 100)
                figures[fault] = {"client_failed": len(load.failed) - failed0, "client_answers": load.ok - ok0,
                                  "naive_failed": sum(1 for c in naive.raw if c != 200) - naive_bad0,
                                  "naive_requests": len(naive.raw) - raw0}
            slowest = load.slowest_s
        assert load.most_urls >= 2, "the clients never learned a direct URL"
        out = os.environ.get("AIMASS_FAULT_FIGURES")
        if out:
            import json

            with open(out, "w") as f:
                json.dump({"figures": figures, "slowest_s": slowest, "answers": load.ok}, f)
        print(f"\nfault figures (concurrency 8 aimass.Client; naive: 1 loop, no retry): {figures}; slowest client answer {slowest:.2f}s")
        assert all(f["client_failed"] == 0 for f in figures.values()), (figures, load.failed[:5])
    finally:
        shutdown(APP)


CONNECTIONS = 1000


# Not strict: the wait in Serve's proxy depends on the machine's load (48 s in one run, 5.4 s in a CI run), so an
# unexpected pass is reported (XPASS) rather than failing the suite. The defect stays open until it holds every time.
@pytest.mark.xfail(strict=False, reason="known defect (issue 11, item 5): through Serve's proxy on the 2-core box the "
                   "burst is answered (200 or V2 503, none lost) but the last answer can take ~48 s: requests wait in the "
                   "proxy before they reach the ingress's admission limit")
def test_a_thousand_connections_at_once_through_the_proxy_are_each_answered_in_bounded_time(serving_cluster, registry, token):
    """1,000 new connections at once to the stable URL (Serve's proxy -> ingress -> batched model): each
    is answered 200, or 503/429 with Retry-After and a V2 body, within a bounded time; never a long
    stall. The figure goes in docs/benchmarks.md."""
    import asyncio
    import json

    from aimass.serving.config import BatchingSpec, DeploymentSpec, IngressSpec, ModelSpec, ServeConfig
    from aimass.serving.deploy import deploy, shutdown
    from tests.serving._ingress import raw_post

    registry.register("burst", [N_IN], 3, alias="champion")
    cfg = ServeConfig(name="burst", route_prefix="/burst", ingress=IngressSpec(num_cpus=0.1, max_queue_wait_s=1.0),
                      models=[ModelSpec(name="burst", model_uri="models:/burst@champion",
                                        deployment=DeploymentSpec(num_cpus=0.1, max_queued_requests=64),
                                        batching=BatchingSpec(max_batch_size=32))],
                      auth={"tokenFile": str(serving_cluster.home / "serve-token")}, rollout_timeout_s=120)
    payload = json.dumps({"inputs": [{"name": "input", "shape": [1, N_IN], "datatype": "FP32", "data": [0.5] * N_IN}]}).encode()
    hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        deploy(cfg)

        async def burst():
            return await asyncio.gather(*(raw_post(serving_cluster.http_port, "/burst/v2/models/burst/infer", payload, hdrs, 60)
                                          for _ in range(CONNECTIONS)), return_exceptions=True)

        t0 = time.perf_counter()
        results = asyncio.run(burst())
        wall = time.perf_counter() - t0
    finally:
        shutdown("burst")
    errors = [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    codes = [c for c, _, _ in done]
    worst = max((t for _, t, _ in done), default=0.0)
    summary = {"connections": CONNECTIONS, "200": codes.count(200), "503": codes.count(503), "429": codes.count(429),
               "other": sorted({c for c in codes if c not in (200, 429, 503)}), "errors": len(errors), "slowest_s": round(worst, 2),
               "wall_s": round(wall, 2),
               "refusals_without_v2_body": sum(1 for c, _, raw in done if c in (429, 503) and b'"request_id"' not in raw)}
    out = os.environ.get("AIMASS_FAULT_FIGURES")
    if out:
        with open(out + ".burst", "w") as f:
            json.dump(summary, f)
    print(f"\nburst through the proxy: {summary}")
    assert not errors, errors[:3]
    assert set(codes) <= {200, 429, 503}, summary
    ours = [raw for c, _, raw in done if c in (429, 503) and b'"request_id"' in raw]  # the ingress's refusals
    assert all(b"retry-after: 1" in raw.lower() for raw in ours), "an ingress refusal without Retry-After"
    assert worst < 10.0, summary
