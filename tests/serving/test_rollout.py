"""Many models and safe updates on real Ray Serve: multiplexing with LRU eviction, a broken rollout that
leaves the old version serving, an alias move that rolls out by itself, a canary rolled back
automatically, and a replica killed under steady load."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.serving._support import LoadLoop, http_client, wait_until

pytestmark = pytest.mark.ray


def body(n_in: int, rows: int = 1) -> dict:
    x = np.linspace(-1, 1, rows * n_in, dtype=np.float32).reshape(rows, n_in)
    return {"inputs": [{"name": "input", "shape": [rows, n_in], "datatype": "FP32", "data": x.ravel().tolist()}]}


def small(**kw):
    from aimass.serving.config import DeploymentSpec

    return DeploymentSpec(num_cpus=0.1, max_constructor_retries=1, health_check_period_s=1.0, health_check_timeout_s=5.0,
                          graceful_shutdown_timeout_s=5.0, **kw)


def base_cfg(serving_cluster, **kw):
    from aimass.serving.config import IngressSpec, ServeConfig

    return ServeConfig(ingress=IngressSpec(num_cpus=0.1), auth={"tokenFile": str(serving_cluster.home / "serve-token")},
                       rollout_timeout_s=120, **kw)


def deployments(app: str) -> dict:
    from ray import serve

    st = serve.status().applications.get(app)
    return {} if st is None else {n: str(d.status).rsplit(".", 1)[-1] for n, d in st.deployments.items()}


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def under_load(serving_cluster, token, path: str, width: int, action, min_during: int = 5):
    """``action()`` while a bounded load loop calls ``path`` (20 answers before it, 20 more after it returns).

    Returns (what ``action`` returned, the loop); asserts that at least ``min_during`` requests were
    answered while ``action`` ran (a rollout takes seconds: "no failed request" must not be a claim
    about an idle loop) and that no request failed, even before its retry.
    """
    with LoadLoop(serving_cluster, token, path, body(width)) as load:
        load.wait_for(20)
        mark = load.mark()
        result = action()
        during = load.answered_since(mark)
        load.wait_for(len(load.final) + 20)
    assert during >= min_during, f"only {during} requests were answered while the action ran"
    assert load.failed_after_retry == 0 and load.raw.count(200) == len(load.raw), load.errors[:5]
    return result, load


def refused(deploy, cfg, pattern: str):
    """A deploy that must fail with ``pattern``."""
    def go():
        with pytest.raises(Exception, match=pattern) as ei:
            deploy(cfg)
        return ei.value
    return go


def test_multiplexing_lru_cache_loads_and_evicts(serving_cluster, registry, token):
    from aimass.serving.config import MultiplexedModel, MultiplexSpec
    from aimass.serving.deploy import deploy, shutdown

    for name, classes in (("mx-a", 3), ("mx-b", 4), ("mx-c", 5)):
        registry.register(name, [6], classes, alias="champion")
    cfg = base_cfg(serving_cluster, name="mx", route_prefix="/mx", multiplex=MultiplexSpec(
        models=[MultiplexedModel(name=n, model_uri=f"models:/{n}@champion") for n in ("mx-a", "mx-b", "mx-c")],
        max_models_per_replica=2, deployment=small(replicas=1)))
    try:
        st = deploy(cfg)
        assert {m["name"]: m["kind"] for m in st["models"]} == {"mx-a": "multiplexed", "mx-b": "multiplexed", "mx-c": "multiplexed"}
        (mx,) = [d for d in st["deployments"] if d != "Ingress"]
        assert set(st["deployments"]) == {"Ingress", mx} and mx.startswith("multiplexed--")
        with http_client(serving_cluster, token) as c:
            # The readiness probe loaded a, b, c (evicting a): the cache holds b, c. Then, with an LRU of 2:
            # a (evicts b), b (evicts c), c (evicts a), a (evicts b), b (evicts c), b (hit)
            for name, classes in (("mx-a", 3), ("mx-b", 4), ("mx-c", 5), ("mx-a", 3), ("mx-b", 4), ("mx-b", 4)):
                r = c.post(f"/mx/v2/models/{name}/infer", json=body(6, 2))
                assert r.status_code == 200, r.text
                assert r.json()["outputs"][0]["shape"] == [2, classes]  # each model answered its own requests
            assert c.get("/mx/v2/models/mx-c").json()["outputs"][0]["shape"] == [-1, 5]
            text = c.get("/mx/metrics").text
        loads = {n: metric(text, "aimass_serve_model_cache_total", model=n, event="load") for n in ("mx-a", "mx-b", "mx-c")}
        evicts = {n: metric(text, "aimass_serve_model_cache_total", model=n, event="evict") for n in ("mx-a", "mx-b", "mx-c")}
        assert loads == {"mx-a": 3.0, "mx-b": 3.0, "mx-c": 2.0}, text
        assert evicts == {"mx-a": 2.0, "mx-b": 2.0, "mx-c": 2.0}, text
        assert metric(text, "aimass_serve_model_cache_total", model="mx-b", event="hit") >= 1.0
    finally:
        shutdown("mx")


@pytest.mark.slow
def test_multiplexed_versions_roll_out_beside_the_old_ones(serving_cluster, registry, token):
    """A new version of a multiplexed model: a broken one fails its probe and never takes traffic; a good
    one is staged in a new multiplexed deployment, probed, then switched to with zero failed requests."""
    from aimass.exceptions import ServingError
    from aimass.serving.config import MultiplexedModel, MultiplexSpec
    from aimass.serving.deploy import deploy, shutdown

    registry.register("mr-a", [6], 3, alias="champion")
    registry.register("mr-b", [6], 4, alias="champion")
    cfg = base_cfg(serving_cluster, name="mr", route_prefix="/mr", multiplex=MultiplexSpec(
        models=[MultiplexedModel(name=n, model_uri=f"models:/{n}@champion") for n in ("mr-a", "mr-b")],
        max_models_per_replica=2, deployment=small(replicas=1)))
    try:
        first = [d for d in deploy(cfg)["deployments"] if d != "Ingress"]
        assert registry.register("mr-a", [6], 3, alias="champion", broken=True) == "2"
        err, load = under_load(serving_cluster, token, "/mr/v2/models/mr-a/infer", 6,
                               refused(deploy, cfg, r"failed its readiness probe for mr-a"))
        assert isinstance(err, ServingError)
        assert set(load.versions) == {"1"} and set(deployments("mr")) == {"Ingress", *first}

        good = registry.register("mr-a", [6], 3, alias="champion", seed=3)
        st, load = under_load(serving_cluster, token, "/mr/v2/models/mr-a/infer", 6, lambda: deploy(cfg))
        first_new = load.versions.index(good)
        assert set(load.versions[:first_new]) == {"1"} and set(load.versions[first_new:]) == {good}
        (now,) = [d for d in st["deployments"] if d != "Ingress"]
        assert now not in first and set(deployments("mr")) == {"Ingress", now}  # the old one retired
    finally:
        shutdown("mr")


@pytest.mark.slow
def test_broken_version_fails_visibly_and_the_old_one_keeps_serving(serving_cluster, registry, token):
    from aimass.exceptions import ServingError
    from aimass.serving.config import ModelSpec
    from aimass.serving.deploy import deploy, shutdown, status

    registry.register("ro", [8], 3, alias="champion")
    cfg = base_cfg(serving_cluster, name="ro", route_prefix="/ro",
                   models=[ModelSpec(name="ro", model_uri="models:/ro@champion", deployment=small(replicas=1))])
    try:
        deploy(cfg)
        assert registry.register("ro", [8], 3, alias="champion", broken=True) == "2"
        err, load = under_load(serving_cluster, token, "/ro/v2/models/ro/infer", 8, refused(
            deploy, cfg, r"rollout failed: deployment ro--2 failed to start: .*size mismatch.*; still serving ro v1"))
        assert isinstance(err, ServingError)
        assert set(load.versions) == {"1"}
        assert len(load.raw) >= 40
        assert deployments("ro") == {"Ingress": "HEALTHY", "ro--1": "HEALTHY"}
        st = status("ro")["apps"][0]
        assert st["models"][0]["version"] == "1"
        assert st["events"][-1]["event"] == "rollout_failed" and "ro--2" in st["events"][-1]["error"]

        # a good version then rolls out with zero failed requests, old -> new, never back
        good = registry.register("ro", [8], 3, alias="champion", seed=3)
        st, load = under_load(serving_cluster, token, "/ro/v2/models/ro/infer", 8, lambda: deploy(cfg))
        assert st["models"][0]["version"] == good
        first_new = load.versions.index(good)
        assert set(load.versions[:first_new]) == {"1"} and set(load.versions[first_new:]) == {good}
        assert deployments("ro") == {"Ingress": "HEALTHY", f"ro--{good}": "HEALTHY"}

        # with watchAlias, moving the alias in the registry is enough
        watched = cfg.model_copy(update={"models": [cfg.models[0].model_copy(update={"watch_alias": True})], "alias_poll_interval_s": 1.0})
        deploy(watched)
        newer = registry.register("ro", [8], 3, alias="champion", seed=4)
        with LoadLoop(serving_cluster, token, "/ro/v2/models/ro/infer", body(8)) as load:
            wait_until(lambda: newer in load.versions, 120, f"version {newer} to serve after the alias moved")
            n = len(load.final)
            load.wait_for(n + 10)
        assert load.failed_after_retry == 0 and load.raw.count(200) == len(load.raw), load.errors[:5]
        wait_until(lambda: deployments("ro") == {"Ingress": "HEALTHY", f"ro--{newer}": "HEALTHY"}, 60, "the old version to retire")
        # the controller records the rollout just after it retires the old deployment
        wait_until(lambda: any(e.get("reason") == "alias moved" and e["plan"]["ro"]["champion"] == newer
                               for e in status("ro")["apps"][0]["events"]), 30, "the alias rollout to be recorded")
    finally:
        shutdown("ro")


@pytest.mark.slow
def test_canary_that_misbehaves_is_rolled_back_and_recorded(serving_cluster, registry, token):
    from aimass.serving.config import CanarySpec, ModelSpec
    from aimass.serving.deploy import deploy, shutdown, status

    registry.register("cn", [8], 3, alias="champion")
    # the challenger expects 4 features: every request routed to it fails there (and falls back to the champion)
    bad = registry.register("cn", [4], 3, alias="challenger")
    canary = CanarySpec(model_uri="models:/cn@challenger", traffic_share=0.5, max_error_rate=0.2, min_requests=5, window_s=60)
    cfg = base_cfg(serving_cluster, name="cn", route_prefix="/cn",
                   models=[ModelSpec(name="cn", model_uri="models:/cn@champion", deployment=small(replicas=1), canary=canary)])
    try:
        st = deploy(cfg)
        assert st["models"][0]["challenger"] == bad and st["models"][0]["canary_share"] == 0.5
        assert set(deployments("cn")) == {"Ingress", "cn--1", f"cn--{bad}"}
        with http_client(serving_cluster, token) as c:
            assert c.get("/cn/v2/models/cn").json()["parameters"]["canary"] == {"version": bad, "traffic_share": 0.5}
            codes, versions = [], []
            for _ in range(60):
                r = c.post("/cn/v2/models/cn/infer", json=body(8))
                codes.append(r.status_code)
                versions.append(r.json().get("model_version"))
            assert set(codes) == {200}  # clients never saw the challenger's failures
            assert set(versions) == {"1"}
            wait_until(lambda: any(e["event"] == "canary_rolled_back" for e in status("cn")["apps"][0]["events"]), 60,
                       "the rollback event")
            wait_until(lambda: set(deployments("cn")) == {"Ingress", "cn--1"}
                       and status("cn")["apps"][0]["models"][0]["challenger"] is None, 60, "the challenger to be removed")
            st = status("cn")["apps"][0]
            ev = next(e for e in st["events"] if e["event"] == "canary_rolled_back")
            assert ev["version"] == bad and re.match(r"error rate 1\.000 > maxErrorRate 0\.2", ev["reason"])
            tag = registry.tags("cn", bad)["aimass.rollback"]
            assert '"error_rate": 1.0' in tag and "maxErrorRate" in tag
            text = c.get("/cn/metrics").text
            assert metric(text, "aimass_serve_rollbacks_total", model="cn", version=bad) == 1.0
            assert metric(text, "aimass_serve_canary_traffic_share", model="cn", version=bad) == 0.0

            # a healthy challenger (the alias moved) gets its share of the traffic
            good = registry.register("cn", [8], 3, alias="challenger", seed=5)
            st = deploy(cfg)
            assert st["models"][0]["challenger"] == good
            versions = [c.post("/cn/v2/models/cn/infer", json=body(8)).json()["model_version"] for _ in range(120)]
            share = versions.count(good) / len(versions)
            assert set(versions) == {"1", good} and 0.3 < share < 0.7, share
            assert c.post(f"/cn/v2/models/cn/versions/{good}/infer", json=body(8)).json()["model_version"] == good
    finally:
        shutdown("cn")


@pytest.mark.slow
def test_a_canary_slower_than_its_p99_limit_is_rolled_back_and_recorded(serving_cluster, registry, token):
    """A healthy but slow challenger: every answer is right, but its p99 over the window is over
    ``maxP99LatencyMs`` (0.1 ms, below what any call through Serve costs), so it is rolled back."""
    from aimass.serving.config import CanarySpec, ModelSpec
    from aimass.serving.deploy import deploy, shutdown, status

    registry.register("cp", [8], 3, alias="champion")
    slow = registry.register("cp", [8], 3, alias="challenger", seed=7)
    canary = CanarySpec(model_uri="models:/cp@challenger", traffic_share=0.5, max_error_rate=0.5, max_p99_latency_ms=0.1,
                        min_requests=5, window_s=60)
    cfg = base_cfg(serving_cluster, name="cp", route_prefix="/cp",
                   models=[ModelSpec(name="cp", model_uri="models:/cp@champion", deployment=small(replicas=1), canary=canary)])
    try:
        assert deploy(cfg)["models"][0]["challenger"] == slow
        with http_client(serving_cluster, token) as c:
            versions = []
            for _ in range(40):
                r = c.post("/cp/v2/models/cp/infer", json=body(8))
                assert r.status_code == 200, r.text  # slow is not failed: its answers are returned
                versions.append(r.json()["model_version"])
            assert slow in versions, "the challenger answered its share until the verdict"
            wait_until(lambda: any(e["event"] == "canary_rolled_back" for e in status("cp")["apps"][0]["events"]), 60,
                       "the rollback event")
            ev = next(e for e in status("cp")["apps"][0]["events"] if e["event"] == "canary_rolled_back")
            assert ev["version"] == slow and re.match(r"p99 latency [0-9.]+ ms > maxP99LatencyMs 0\.1 ", ev["reason"]), ev
            tag = registry.tags("cp", slow)["aimass.rollback"]
            assert '"p99_ms"' in tag and "maxP99LatencyMs" in tag
            wait_until(lambda: status("cp")["apps"][0]["models"][0]["challenger"] is None, 60, "the challenger to be removed")
            assert {c.post("/cp/v2/models/cp/infer", json=body(8)).json()["model_version"] for _ in range(20)} == {"1"}
    finally:
        shutdown("cp")


def test_a_colocated_champion_answers_from_the_ingress_and_rolls_out_without_failed_requests(serving_cluster, registry, token):
    """``colocate``: the ingress loads the champion itself (no hop to the model deployment) once the
    deployment has passed its readiness check; a new version answers through its deployment until the
    ingress has its own copy, with no failed request during the switch."""
    import torch

    from aimass.models.io import load_model
    from aimass.serving.config import BatchingSpec, ModelSpec
    from aimass.serving.deploy import deploy, shutdown

    registry.register("co", [8], 3, alias="champion")
    cfg = base_cfg(serving_cluster, name="co", route_prefix="/co",
                   models=[ModelSpec(name="co", model_uri="models:/co@champion", deployment=small(replicas=1), colocate=True,
                                     batching=BatchingSpec(max_batch_size=8))])

    def colocated(c, version: str) -> bool:
        meta = c.get("/co/v2/models/co").json()
        return meta["versions"] == [version] and meta["parameters"].get("colocated", False)

    try:
        deploy(cfg)
        with http_client(serving_cluster, token) as c:
            wait_until(lambda: colocated(c, "1"), 60, "the ingress to load its copy of v1")
            x = np.linspace(-1, 1, 3 * 8, dtype=np.float32).reshape(3, 8)
            local = load_model(registry.tracker.download_model_dir("models:/co/1"))
            want = local.predict_proba(torch.from_numpy(x)).numpy()
            req = {"inputs": [{"name": "input", "shape": [3, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
            with ThreadPoolExecutor(8) as pool:  # concurrent requests: batched in the ingress, split back right
                answers = list(pool.map(lambda _: c.post("/co/v2/models/co/infer", json=req), range(32)))
            for r in answers:
                assert r.status_code == 200, r.text
                np.testing.assert_allclose(np.asarray(r.json()["outputs"][0]["data"]).reshape(3, 3), want, rtol=1e-5, atol=1e-6)
            text = c.get("/co/metrics").text
            assert metric(text, "aimass_serve_requests_total", model="co", version="1", code="200") >= 32
            assert metric(text, "aimass_serve_batch_size_count", model="co", version="1") >= 32

            good = registry.register("co", [8], 3, alias="champion", seed=3)
            _, load = under_load(serving_cluster, token, "/co/v2/models/co/infer", 8, lambda: deploy(cfg))
            first_new = load.versions.index(good)
            assert set(load.versions[:first_new]) == {"1"} and set(load.versions[first_new:]) == {good}
            wait_until(lambda: colocated(c, good), 60, f"the ingress to load its copy of v{good}")
            assert deployments("co") == {"Ingress": "HEALTHY", f"co--{good}": "HEALTHY"}
    finally:
        shutdown("co")


@pytest.mark.slow
def test_killed_replica_under_load_is_replaced_without_failed_requests(serving_cluster, registry, token):
    import ray

    from aimass.serving.config import ModelSpec
    from aimass.serving.deploy import deploy, shutdown

    registry.register("rk", [8], 3, alias="champion")
    cfg = base_cfg(serving_cluster, name="rk", route_prefix="/rk",
                   models=[ModelSpec(name="rk", model_uri="models:/rk@champion", deployment=small(replicas=2))])

    def replicas() -> list[str]:
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith("SERVE_REPLICA::rk#rk--1#"))

    def running() -> int:
        from ray import serve

        d = serve.status().applications["rk"].deployments["rk--1"]
        return {str(k).rsplit(".", 1)[-1]: v for k, v in d.replica_states.items()}.get("RUNNING", 0)

    try:
        deploy(cfg)
        before = replicas()
        assert len(before) == 2 and running() == 2
        with LoadLoop(serving_cluster, token, "/rk/v2/models/rk/infer", body(8), pause_s=0.005) as load:
            load.wait_for(50)
            ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
            n = len(load.final)
            wait_until(lambda: running() == 2 and before[0] not in replicas() and len(replicas()) == 2, 90,
                       "the killed replica to be replaced")
            load.wait_for(max(n + 50, len(load.final) + 20))
        assert load.availability >= 0.99, (load.availability, load.errors[:5])
        assert load.failed_after_retry == 0, load.errors[:5]
        assert len(load.raw) >= 100
        after = replicas()
        assert len(after) == 2 and before[1] in after and before[0] not in after
    finally:
        shutdown("rk")
