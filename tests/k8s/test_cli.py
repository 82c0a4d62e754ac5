"""`aimass submit --to k8s` and `aimass runs ...` with the in-memory Kubernetes API behind the real client."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from aimass.k8s.validation import kuberay_semantic_errors, validate_core_object, validate_kuberay_object
from tests.k8s._support import BAD_PIPELINE, TINY_PIPELINE
from tests.k8s.conftest import IMAGE, NAMESPACE

RID = "20250103-000000-aaaaaa"


@pytest.fixture
def cli(fake, monkeypatch, tmp_path):
    """Run the CLI with its Kubernetes client wired to the fake API server."""
    import aimass.k8s.client as kclient
    from aimass.cli.main import app

    monkeypatch.setattr(kclient, "load_api_client", lambda context=None: fake.api_client())
    monkeypatch.setenv("AIMASS_RAY_IMAGE", IMAGE)
    monkeypatch.setenv("AIMASS_K8S_NAMESPACE", NAMESPACE)
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY_PIPELINE)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [a.replace("{file}", str(f)) for a in args])

    return invoke


def test_dry_run_prints_valid_objects(cli, fake):
    r = cli("submit", "{file}", "--to", "k8s", "--run-id", RID, "--dry-run", "--label", "team=vision")
    assert r.exit_code == 0, r.output
    cm, job = list(yaml.safe_load_all(r.stdout))
    assert validate_core_object(cm) == [] and validate_kuberay_object(job) == [] and kuberay_semantic_errors(job) == []
    assert job["metadata"]["labels"]["team"] == "vision" and job["metadata"]["namespace"] == NAMESPACE
    assert not fake.requests  # nothing was sent


def test_submit_then_runs_list_show_logs_cancel(cli, fake):
    r = cli("submit", "{file}", "--to", "k8s", "--run-id", RID, "-o", "json")
    assert r.exit_code == 0, r.output
    ref = json.loads(r.stdout)
    assert ref["backend"] == "k8s" and ref["namespace"] == NAMESPACE and ref["name"] == f"aimass-{RID}"
    assert fake.get("rayjobs", NAMESPACE, f"aimass-{RID}") is not None

    fake.set_rayjob_status(NAMESPACE, f"aimass-{RID}", jobDeploymentStatus="Running", jobStatus="RUNNING")
    r = cli("runs", "list", "-o", "json")
    assert r.exit_code == 0, r.output
    row = [x for x in json.loads(r.stdout) if x["run_id"] == RID][0]
    assert row["state"] == "RUNNING" and row["where"] == f"k8s:{NAMESPACE}"

    r = cli("runs", "list")  # the table for people
    assert r.exit_code == 0 and RID in r.stdout and "RUNNING" in r.stdout

    r = cli("runs", "show", RID)
    assert r.exit_code == 0 and "RUNNING" in r.stdout and "jobDeploymentStatus" in r.stdout

    fake.add_pod(NAMESPACE, f"aimass-{RID}-pod", {"job-name": f"aimass-{RID}"}, log="step data: SUCCEEDED\n")
    r = cli("runs", "logs", RID)
    assert r.exit_code == 0 and r.stdout == "step data: SUCCEEDED\n"

    r = cli("runs", "cancel", RID, "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"]["state"] == "CANCELLED"
    assert fake.get("rayjobs", NAMESPACE, f"aimass-{RID}")["spec"]["suspend"] is True

    r = cli("runs", "list", "--backend", "k8s", "-n", NAMESPACE, "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["state"] == "CANCELLED"

    r = cli("runs", "cancel", RID, "--delete")
    assert r.exit_code == 0 and fake.get("rayjobs", NAMESPACE, f"aimass-{RID}") is None


def test_submit_watch_exit_codes(cli, fake):
    def finish(ns, name, status):
        fake.add_pod(ns, f"{name}-pod", {"job-name": name}, log="done\n")
        fake.set_rayjob_status(ns, name, jobDeploymentStatus="Complete", jobStatus=status)

    fake.on_rayjob_created = lambda f, obj: finish(NAMESPACE, obj["metadata"]["name"], "SUCCEEDED")
    r = cli("submit", "{file}", "--to", "k8s", "--run-id", RID, "--watch")
    assert r.exit_code == 0, r.output
    assert "done" in r.stdout and "SUCCEEDED" in r.stdout
    fake.on_rayjob_created = lambda f, obj: finish(NAMESPACE, obj["metadata"]["name"], "FAILED")
    r = cli("submit", "{file}", "--to", "k8s", "--run-id", "20250103-000000-bbbbbb", "--watch", "-o", "json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["status"]["state"] == "FAILED"


def test_errors_are_clear(cli, fake, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PIPELINE)
    r = cli("submit", str(bad), "--to", "k8s")
    assert r.exit_code == 2
    assert f"{bad}:13" in r.stderr and "confg" in r.stderr
    assert not fake.requests

    fake.deny("POST", "rayjobs")
    r = cli("submit", "{file}", "--to", "k8s", "--run-id", RID)
    assert r.exit_code == 1
    assert "cannot create rayjobs in namespace 'ml'" in r.stderr.replace("\n", " ")

    r = cli("submit", "{file}", "--to", "k8s", "--run-id", "Not_Valid")
    assert r.exit_code == 1 and "invalid run id" in r.stderr

    r = cli("runs", "show", "20250103-000000-ffffff")
    assert r.exit_code == 1 and "no run" in r.stderr

    r = cli("submit", "{file}", "--to", "api", "--api-url", "http://127.0.0.1:9", "--entrypoint", "validate")
    assert r.exit_code == 1 and "only runs pipelines" in r.stderr


def test_runs_submitted_elsewhere_are_found_through_the_backend(cli, fake, tmp_path, monkeypatch):
    """A run this machine never submitted: show, logs and cancel ask the cluster with --backend."""
    r = cli("submit", "{file}", "--to", "k8s", "--run-id", RID, "-o", "json")
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path / "another-laptop"))  # no local record of the submission
    r = cli("runs", "show", RID)
    assert r.exit_code == 1 and "no run" in r.stderr and "--backend" in r.stderr

    fake.set_rayjob_status(NAMESPACE, f"aimass-{RID}", jobDeploymentStatus="Running", jobStatus="RUNNING")
    k8s = ("--backend", "k8s", "-n", NAMESPACE)
    r = cli("runs", "show", RID, *k8s, "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"]["state"] == "RUNNING" and json.loads(r.stdout)["run_id"] == RID
    fake.add_pod(NAMESPACE, f"aimass-{RID}-pod", {"job-name": f"aimass-{RID}"}, log="step train: RUNNING\n")
    r = cli("runs", "logs", RID, *k8s)
    assert r.exit_code == 0 and r.stdout == "step train: RUNNING\n"
    r = cli("runs", "cancel", RID, *k8s, "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"]["state"] == "CANCELLED"
    assert fake.get("rayjobs", NAMESPACE, f"aimass-{RID}")["spec"]["suspend"] is True
    assert not (tmp_path / "another-laptop" / "submissions.json").exists() or RID not in (
        tmp_path / "another-laptop" / "submissions.json").read_text()
    r = cli("runs", "show", "20250103-000000-ffffff", *k8s)
    assert r.exit_code == 1 and "20250103-000000-ffffff" in r.stderr


def test_runs_list_shows_local_runs_too(cli, monkeypatch):
    """Local runs come from aimass.orchestrator.state (the lead's module), merged with submissions."""
    import aimass.orchestrator.state as state

    step = state.StepState(name="data", type="data", status="SUCCEEDED", cached=True, duration_s=1.5,
                           outputs={"dataset": "file:///d"}, mlflow_run_id="m1")
    local = state.RunState(run_id="20250101-000000-local1", pipeline="tiny", spec={}, spec_sha256="0" * 64,
                           status="SUCCEEDED", started_at=1_700_000_000.0, finished_at=1_700_000_042.0,
                           steps={"data": step}, mlflow_run_id="m0")
    monkeypatch.setattr(state, "list_runs", lambda settings=None, limit=50: [local])
    monkeypatch.setattr(state, "load_run", lambda settings, run_id: local if run_id == local.run_id else
                        (_ for _ in ()).throw(__import__("aimass.exceptions").exceptions.NotFoundError("no run")))
    r = cli("runs", "list", "-o", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert rows == [{"run_id": local.run_id, "pipeline": "tiny", "where": "local", "state": "SUCCEEDED",
                     "started_at": 1_700_000_000.0, "finished_at": 1_700_000_042.0, "message": None}]
    r = cli("runs", "show", local.run_id)
    assert r.exit_code == 0 and "SUCCEEDED" in r.stdout and "data" in r.stdout and "yes" in r.stdout
    r = cli("runs", "logs", local.run_id)
    assert r.exit_code == 1 and "ran locally" in r.stderr
