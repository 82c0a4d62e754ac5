"""Redeploying on a cluster that already serves: scale up and down, roll out a new version and roll back
to one the rollout controller has already probed, each under steady load with zero failed requests.

The rollout controller is a long-lived actor: every step below probes deployments it has probed
before (by name), which is what broke when the probe reused Serve's per-process cached handle.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.serving._support import LoadLoop

pytestmark = pytest.mark.ray


def _body(n_in: int) -> dict:
    x = np.linspace(-1, 1, n_in, dtype=np.float32)
    return {"inputs": [{"name": "input", "shape": [1, n_in], "datatype": "FP32", "data": x.tolist()}]}


def _cfg(cluster, version: str, replicas: int):
    from aimass.serving.config import (
        DeploymentSpec,
        IngressSpec,
        ModelSpec,
        ServeConfig,
    )

    dep = DeploymentSpec(num_cpus=0.1, replicas=replicas, max_constructor_retries=1, health_check_period_s=1.0,
                         health_check_timeout_s=5.0, graceful_shutdown_timeout_s=5.0)
    return ServeConfig(name="rd", route_prefix="/rd", ingress=IngressSpec(num_cpus=0.1), rollout_timeout_s=120,
                       auth={"tokenFile": str(cluster.home / "serve-token")},
                       models=[ModelSpec(name="rd", model_uri=f"models:/rd/{version}", deployment=dep)])


def _replicas(app: str) -> dict[str, dict[str, int]]:
    from ray import serve

    st = serve.status().applications[app]
    return {n: {str(k).rsplit(".", 1)[-1]: v for k, v in (d.replica_states or {}).items()} for n, d in st.deployments.items()}


def _replica_ids(app: str, deployment: str) -> set[str]:
    import ray
    from ray.util.state import list_actors

    # this test cluster's own address: the session cluster may be running on the same host
    address = ray.get_runtime_context().gcs_address
    return {a.name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
            if a.name and a.name.startswith(f"SERVE_REPLICA::{app}#{deployment}#")}


@pytest.mark.slow
def test_scale_roll_out_and_roll_back_on_a_serving_cluster(serving_cluster, registry, token):
    from aimass.serving.deploy import deploy, shutdown

    registry.register("rd", [8], 3, alias="champion")
    v2 = registry.register("rd", [8], 3, seed=3)

    def step(version: str, replicas: int) -> tuple[dict, LoadLoop]:
        with LoadLoop(serving_cluster, token, "/rd/v2/models/rd/infer", _body(8)) as load:
            load.wait_for(10)
            st = deploy(_cfg(serving_cluster, version, replicas))
            load.wait_for(len(load.final) + 10)
        assert load.failed_after_retry == 0 and load.raw.count(200) == len(load.raw), load.errors[:5]
        return st, load

    try:
        deploy(_cfg(serving_cluster, "1", 1))
        first = _replica_ids("rd", "rd--1")
        assert len(first) == 1

        # scale 1 -> 2 -> 1: the running replica is kept (scaling is not a new version), one is added, then one goes
        st, _ = step("1", 2)
        assert st["models"][0]["version"] == "1"
        assert _replicas("rd")["rd--1"] == {"RUNNING": 2}
        assert first <= _replica_ids("rd", "rd--1")
        st, _ = step("1", 1)
        assert _replicas("rd")["rd--1"] == {"RUNNING": 1}

        # roll out v2: old -> new, never back; v1 retired
        st, load = step(v2, 1)
        assert st["models"][0]["version"] == v2
        first_new = load.versions.index(v2)
        assert set(load.versions[:first_new]) == {"1"} and set(load.versions[first_new:]) == {v2}
        assert set(_replicas("rd")) == {"Ingress", f"rd--{v2}"}

        # roll back to v1, a deployment name the controller has probed before; then scale the rolled-back version
        st, load = step("1", 1)
        assert st["models"][0]["version"] == "1"
        first_old = load.versions.index("1")
        assert set(load.versions[:first_old]) == {v2} and set(load.versions[first_old:]) == {"1"}
        assert set(_replicas("rd")) == {"Ingress", "rd--1"}
        st, _ = step("1", 2)
        assert _replicas("rd")["rd--1"] == {"RUNNING": 2}
        events = [e["event"] for e in st["events"]]
        assert "rollout_failed" not in events and events.count("rolled_out") == 2, events  # v2, then v1 again
    finally:
        shutdown("rd")
