"""AIMASS_RAY_ADDRESS: `aimass run` uses the cluster it names and starts no local cluster of its own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import aimass_bin, cli_env
from tests.procs import owned_pids

pytestmark = pytest.mark.ray

DATA_ONLY = {"apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": "on-existing"},
             "spec": {"steps": [{"name": "data", "type": "data", "config": {"source": "builtin:iris"}}]}}


def test_run_uses_the_cluster_aimass_ray_address_names(local_ray, _local_cluster, tmp_path):
    from aimass.orchestrator.ray_runtime import local_cluster_file, ray_temp_dir, stop_local_cluster

    other_home = tmp_path / "other-home"  # a home with no cluster of its own: one would be started there
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(yaml.safe_dump(DATA_ONLY))
    env = cli_env(AIMASS_HOME=str(other_home), AIMASS_RAY_ADDRESS=_local_cluster,
                  AIMASS_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", AIMASS_ARTIFACT_ROOT=str(tmp_path / "artifacts"))
    try:
        out = subprocess.run([aimass_bin(), "run", str(spec), "--output", "json"], env=env, capture_output=True, text=True,
                             timeout=600)
        started_here = sorted(owned_pids([ray_temp_dir(other_home)]))
    finally:
        stop_local_cluster(other_home, timeout_s=5)  # only if the code under test wrongly started one
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert json.loads(out.stdout)["status"] == "SUCCEEDED"
    assert started_here == [], "a local cluster was started although AIMASS_RAY_ADDRESS named one"
    assert not local_cluster_file(other_home).exists() and not Path(ray_temp_dir(other_home)).exists()
    # the CLI's driver was a job of the named cluster
    from ray._private import state

    assert any(str(spec) in (j.get("Entrypoint") or "") for j in state.jobs()), [j.get("Entrypoint") for j in state.jobs()]
    jobs = subprocess.run([aimass_bin(), "runs", "list", "--output", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert jobs.returncode == 0 and len(json.loads(jobs.stdout)) == 1, jobs.stdout[-1000:] + jobs.stderr[-1000:]
