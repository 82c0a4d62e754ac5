"""Test-wide isolation: a private AIMASS_HOME, no stray Ray/MLflow settings, deterministic seeds."""

from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import pytest

from tests.ports import distinct_free_ports

REPO = Path(__file__).resolve().parents[1]

# Before anything imports aimass.settings: every test session gets its own embedded default.
_HOME = Path(tempfile.mkdtemp(prefix="aimass-test-home-"))
os.environ["AIMASS_HOME"] = str(_HOME)
for var in ("AIMASS_TRACKING_URI", "AIMASS_ARTIFACT_ROOT", "AIMASS_RAY_ADDRESS", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
    os.environ.pop(var, None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The session cluster's GCS, dashboard and Serve ports: what the environment says, else free ones (never a
# fixed port that another session, engineer or CI job on the same machine may hold).
for _var, _port in zip(("AIMASS_RAY_PORT", "AIMASS_RAY_DASHBOARD_PORT", "AIMASS_SERVE_PORT"),
                       distinct_free_ports(3, {int(v) for k in ("AIMASS_RAY_PORT", "AIMASS_RAY_DASHBOARD_PORT",
                                                                   "AIMASS_SERVE_PORT") if (v := os.environ.get(k))})):
    os.environ.setdefault(_var, str(_port))
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(scope="session")
def aimass_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def _local_cluster(aimass_home):
    """One persistent local Ray cluster for the whole session (the same kind `aimass run` starts)."""
    from aimass.orchestrator.ray_runtime import start_local_cluster, stop_local_cluster

    address = start_local_cluster(aimass_home, num_cpus=2)
    yield address
    stop_local_cluster(aimass_home)


@pytest.fixture(scope="session")
def cluster_markers(aimass_home) -> list[str]:
    """Private paths that name the session cluster's processes (see tests/procs.py): only these may be killed."""
    from aimass.orchestrator.ray_runtime import ray_temp_dir

    return [ray_temp_dir(aimass_home)]


@pytest.fixture(scope="module")
def local_ray(_local_cluster, aimass_home):
    """This process connected to the session's cluster, for one test module.

    CLI subprocesses started by tests connect to the same cluster. The connection is closed after the
    module, so other suites may connect this process to clusters of their own.
    """
    import ray

    from aimass.orchestrator.ray_runtime import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(home=aimass_home, num_cpus=2)
    yield ray
    ray.shutdown()


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def aimass_bin() -> str:
    return str(Path(sys.executable).with_name("aimass"))
