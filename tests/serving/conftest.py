"""One real local Ray cluster (``ray start`` on loopback, token auth, explicit ports) for the serving tests.

The cluster gets its own ``AIMASS_HOME`` and temp dir under /tmp, its GCS on a free port (or
$AIMASS_TEST_RAY_PORT) and Serve's HTTP proxy on a free loopback port; it lives for the serving package only and is torn down
by stopping exactly the processes it started (never ``ray stop``, which would end other clusters).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.serving._support import Cluster, Registry, cluster_markers, gcs_port, kill_cluster


@pytest.fixture(scope="package")
def serving_cluster():
    home = Path(tempfile.mkdtemp(prefix="amsv-", dir="/tmp"))
    http_port = free_port()
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    env = {
        "AIMASS_HOME": str(home),
        "AIMASS_SERVE_PORT": str(http_port),
        "AIMASS_TRACKING_URI": tracking,
        "AIMASS_MLFLOW_ARTIFACT_LOCATION": str(home / "mlartifacts"),
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    for k in ("AIMASS_SERVE_TOKEN", "AIMASS_SERVE_TOKEN_FILE", "RAY_ADDRESS", "AIMASS_RAY_ADDRESS"):
        saved.setdefault(k, os.environ.get(k))
        os.environ.pop(k, None)
    os.environ.update(env)
    import ray

    from aimass.orchestrator import ray_runtime as rr

    temp_dir = rr.ray_temp_dir(home)
    markers = cluster_markers(home)  # private dirs only: never a port someone else may hold
    saved.setdefault("RAY_AUTH_TOKEN_PATH", os.environ.get("RAY_AUTH_TOKEN_PATH"))
    if ray.is_initialized():  # an earlier module's connection to the session cluster
        ray.shutdown()
    rr.use_cluster_token(home)  # this home's own Ray token (Ray caches the previous cluster's)
    try:
        address = rr.start_local_cluster(home, num_cpus=8, port=gcs_port(), dashboard_port=free_port())
        rr.connect(address, logging_level="ERROR", log_to_driver=False, namespace="aimass-tests")
        # the registry must exist before replicas read it concurrently
        from aimass.tracking import Tracker

        Tracker(tracking).ensure_experiment("serving-tests", artifact_location=str(home / "mlartifacts"))
        yield Cluster(home, address, http_port, tracking)
    finally:
        # no serve.shutdown(): the whole cluster goes below, and a graceful Serve shutdown costs ~15 s
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass
        kill_cluster(markers)  # SIGKILL: a throw-away cluster needs no graceful stop
        time.sleep(0.5)
        try:
            rr.stop_local_cluster(home, timeout_s=5)
        except Exception:  # noqa: BLE001
            pass
        if temp_dir.startswith("/tmp/aimass-ray-"):
            shutil.rmtree(temp_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not os.environ.get("AIMASS_TEST_KEEP_HOME"):  # keep logs for debugging
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="package")
def registry(serving_cluster):
    """A helper that registers real (tiny) zoo models in the test MLflow registry."""
    return Registry(serving_cluster)


@pytest.fixture(scope="package")
def token(serving_cluster) -> str:
    """The token every test deployment uses (a file, as in production)."""
    from aimass.serving.auth import ensure_token_file, read_tokens

    path = ensure_token_file(serving_cluster.home / "serve-token")
    return read_tokens(path)[0]


