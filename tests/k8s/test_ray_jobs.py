"""The Ray Jobs backend against a real local Ray cluster with token auth (started and stopped here).

The jobs run real, allowlisted commands: `aimass pipeline validate pipeline.yaml` (no training
needed) and, to test cancelling, a sleeping command added to the allowlist for this test only.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aimass.exceptions import AuthError, ConflictError, NotFoundError
from aimass.orchestrator.executors import base
from aimass.orchestrator.executors.ray_jobs import RayJobsExecutor
from tests.k8s._support import TINY_PIPELINE, start_local_ray, stop_local_ray, tiny_spec

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = start_local_ray(num_cpus=2)
    yield cluster
    stop_local_ray(cluster)


@pytest.fixture
def ray_ex(ray_cluster):
    return RayJobsExecutor(ray_cluster.address, token_file=str(ray_cluster.token_file), action="validate",
                           poll_interval_s=0.5)


def test_submit_runs_the_spec_on_the_cluster(ray_ex, ray_cluster):
    spec = tiny_spec()
    ref = ray_ex.submit(spec, "20250102-000000-aaaaaa", labels={"team": "vision"}, owner="alice")
    assert ref.backend == "ray" and ref.name == "aimass-20250102-000000-aaaaaa"
    assert ray_cluster.token not in json.dumps(ref.to_dict())  # a token file path, never the token
    lines = list(ray_ex.logs(ref, follow=True))
    text = "\n".join(lines)
    assert "aimass pipeline validate pipeline.yaml" in text  # the allowlisted entrypoint, as Ray ran it
    assert "pipeline tiny is valid" in text  # the spec travelled in the working_dir
    st = ray_ex.status(ref)
    assert st.state == "SUCCEEDED" and st.terminal and st.finished_at >= st.started_at
    got = ray_ex.get("20250102-000000-aaaaaa")
    assert got.owner == "alice" and got.labels == {"team": "vision"} and got.pipeline == "tiny"
    assert "20250102-000000-aaaaaa" in [r.run_id for r in ray_ex.list()]
    assert list(ray_ex.logs(ref, tail_lines=1)) == lines[-1:]
    assert ray_ex.cancel(ref).state == "SUCCEEDED"  # cancelling a finished run changes nothing
    with pytest.raises(ConflictError, match="already exists"):
        ray_ex.submit(spec, "20250102-000000-aaaaaa")


@pytest.fixture(scope="module")
def invalid_run(ray_cluster):
    """A spec that only the cluster validates (local validation bypassed by editing it after parsing)."""
    ex = RayJobsExecutor(ray_cluster.address, token_file=str(ray_cluster.token_file), action="validate", poll_interval_s=0.5)
    spec = tiny_spec()
    spec.spec.steps[1].config["numWorkers"] = 0
    ref = ex.submit(spec, "20250102-000000-bbbbbb")
    return ex, ref, "\n".join(ex.logs(ref, follow=True))


def test_an_invalid_spec_is_reported_by_the_cluster(invalid_run):
    """Same spec, same behaviour: the cluster's validation is the CLI's, with file:line."""
    _, _, text = invalid_run
    assert "pipeline.yaml:" in text and "numWorkers" in text and "greater than or equal to 1" in text


def test_an_invalid_spec_fails_the_job(invalid_run):
    ex, ref, _ = invalid_run
    assert ex.status(ref).state == "FAILED"


def test_cancel_stops_a_running_job(ray_cluster, monkeypatch):
    monkeypatch.setitem(base.ENTRYPOINTS, "sleep", ("python", "-c", "import time; print('started', flush=True); time.sleep(300)"))
    ex = RayJobsExecutor(ray_cluster.address, token_file=str(ray_cluster.token_file), action="sleep", poll_interval_s=0.5)
    ref = ex.submit(tiny_spec(), "20250102-000000-cccccc")
    import time

    deadline = time.monotonic() + 60
    while ex.status(ref).state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ex.status(ref).state == "RUNNING"
    st = ex.cancel(ref)
    assert st.state == "CANCELLED" and st.details["jobStatus"] == "STOPPED"


def test_token_auth_is_enforced(ray_cluster):
    with pytest.raises(AuthError, match="refused our token"):
        RayJobsExecutor(ray_cluster.address, token="not-the-token-0123456789").list()
    ex = RayJobsExecutor(ray_cluster.address, token=ray_cluster.token)
    with pytest.raises(NotFoundError):
        ex.get("20250102-000000-ffffff")


def test_cli_submit_watch_and_runs_commands(ray_cluster, tmp_path):
    from aimass.cli.main import app

    f = tmp_path / "tiny.yaml"
    f.write_text(TINY_PIPELINE)
    runner = CliRunner()
    args = ["submit", str(f), "--to", "ray", "--address", ray_cluster.address, "--token-file", str(ray_cluster.token_file),
            "--entrypoint", "validate", "--run-id", "20250102-000000-dddddd", "--watch", "-o", "json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["status"]["state"] == "SUCCEEDED" and out["backend"] == "ray"
    assert "token_file" in out["options"] and ray_cluster.token not in r.stdout

    r = runner.invoke(app, ["runs", "list", "-o", "json"])
    assert r.exit_code == 0, r.output
    rows = {row["run_id"]: row for row in json.loads(r.stdout)}
    assert rows["20250102-000000-dddddd"]["state"] == "SUCCEEDED"
    assert rows["20250102-000000-dddddd"]["where"] == f"ray:{ray_cluster.address}"

    r = runner.invoke(app, ["runs", "logs", "20250102-000000-dddddd"])
    assert r.exit_code == 0 and "pipeline tiny is valid" in r.stdout

    r = runner.invoke(app, ["runs", "show", "20250102-000000-dddddd", "-o", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"]["state"] == "SUCCEEDED"

    r = runner.invoke(app, ["runs", "list", "--backend", "ray", "--address", ray_cluster.address,
                            "--token-file", str(ray_cluster.token_file), "-o", "json"])
    assert r.exit_code == 0 and "20250102-000000-dddddd" in r.stdout
