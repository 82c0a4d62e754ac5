"""Faults on a real local Ray cluster: a training worker SIGKILLed after a checkpoint, and the
pipeline driver killed mid-run then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from aimass.orchestrator import run_pipeline
from aimass.orchestrator.state import load_run
from aimass.settings import Settings
from aimass.spec import parse_pipeline
from aimass.tracking import Tracker
from tests.conftest import aimass_bin, cli_env
from tests.procs import cluster_workers

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 6


def fault_spec(name: str, epochs: int = EPOCHS) -> dict:
    return {
        "apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {"seed": 7, "steps": [
            {"name": "data", "type": "data", "config": {
                "source": "synthetic", "synthetic": {"numSamples": 30000, "numFeatures": 64, "numClasses": 4, "classSep": 1.5}}},
            # cache off: every test here must really train (an identical earlier train step would be reused)
            {"name": "train", "type": "train", "dependsOn": ["data"], "cache": False, "config": {
                "model": "mlp", "modelArgs": {"hidden": [512, 512], "dropout": 0.0}, "numWorkers": 2, "epochs": epochs,
                "batchSize": 32, "optimizer": {"name": "sgd", "lr": 0.05}, "maxFailures": 2}},
        ]},
    }


def checkpoints(settings: Settings, run_id: str) -> list[Path]:
    d = Path(settings.artifact_root) / "runs" / run_id / "steps" / "train" / "ray" / "train"
    return sorted(d.glob("checkpoint_*")) if d.exists() else []


def wait_for(pred, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def train_worker_pids(markers: list[str]) -> list[int]:
    """PIDs of live Ray Train workers of *this session's* cluster (never another cluster's on the machine)."""
    return cluster_workers(markers, "ray::RayTrainWorker")


def history(tracker: Tracker, run: str) -> list[tuple[int, float]]:
    return tracker.get_metric_history(run, "val_accuracy")


def test_sigkill_training_worker_resumes_from_checkpoint(local_ray, cluster_markers):
    settings = Settings.load()
    spec = parse_pipeline(fault_spec("fault-worker"))
    run_id = "fault-worker-1"
    killed: dict = {}

    def killer():
        wait_for(lambda: len(checkpoints(settings, run_id)) >= 2, 300, "2 checkpoints")
        pids = wait_for(lambda: train_worker_pids(cluster_markers), 30, "train workers")
        killed["epoch_checkpoints"] = len(checkpoints(settings, run_id))
        os.kill(pids[-1], signal.SIGKILL)
        killed["pid"] = pids[-1]

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    state = run_pipeline(spec, settings, run_id=run_id)
    t.join(5)
    assert killed.get("pid"), "the worker was never killed"
    assert state.status == "SUCCEEDED", state.error
    tr = Tracker(settings.tracking_uri)
    train_run = tr.get_run(state.steps["train"].mlflow_run_id)
    assert train_run.tags["aimass.restarts"] == "1"
    resumed_from = int(train_run.tags["aimass.resumed_from_epoch"])
    assert resumed_from >= 1, "restarted from scratch instead of the last checkpoint"
    # the newest checkpoint directory may still have been registering when the worker died
    assert resumed_from >= killed["epoch_checkpoints"] - 1
    epochs_seen = [h["epoch"] for h in state.steps["train"].outputs["model"]["history"]]
    assert epochs_seen == list(range(1, EPOCHS + 1)), "epochs before the checkpoint were trained again"

    # The same seeded run without the fault ends at (almost) the same quality.
    clean = run_pipeline(parse_pipeline(fault_spec("fault-worker")), settings, run_id="fault-worker-clean")
    assert not clean.steps["train"].cached and clean.steps["train"].outputs["train_metrics"]["restarts"] == 0
    a = state.steps["train"].outputs["train_metrics"]["final_val_accuracy"]
    b = clean.steps["train"].outputs["train_metrics"]["final_val_accuracy"]
    assert abs(a - b) < 0.05, (a, b)

    # Every CPU is free again once the run is over (no orphaned workers or placement groups).
    wait_for(lambda: local_ray.available_resources().get("CPU", 0) >= 2, 60, "CPUs released")


def test_worker_killed_more_than_max_failures_fails_clearly(local_ray, cluster_markers):
    settings = Settings.load()
    spec_d = fault_spec("fault-too-many", epochs=40)
    spec_d["spec"]["steps"][1]["config"]["maxFailures"] = 0
    run_id = "fault-too-many-1"

    def killer():
        wait_for(lambda: len(checkpoints(settings, run_id)) >= 1, 300, "a checkpoint")
        os.kill(wait_for(lambda: train_worker_pids(cluster_markers), 30, "train workers")[0], signal.SIGKILL)

    threading.Thread(target=killer, daemon=True).start()
    state = run_pipeline(parse_pipeline(spec_d), settings, run_id=run_id)
    assert state.status == "FAILED"
    err = state.steps["train"].error["message"]
    assert "training failed after 0 allowed worker restart(s)" in err
    wait_for(lambda: local_ray.available_resources().get("CPU", 0) >= 2, 60, "CPUs released")


def test_killed_driver_resumes_without_redoing_completed_steps(local_ray, tmp_path):
    settings = Settings.load()
    spec_file = tmp_path / "pipeline.yaml"
    spec_file.write_text(yaml.safe_dump(fault_spec("fault-driver")))
    run_id = "fault-driver-1"
    log = tmp_path / "driver.log"
    proc = subprocess.Popen([aimass_bin(), "run", str(spec_file), "--run-id", run_id, "--output", "json"], env=cli_env(),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def progressed():
        if proc.poll() is not None:
            raise AssertionError(f"the driver exited early ({proc.returncode}): {log.read_text()[-3000:]}")
        return len(checkpoints(settings, run_id)) >= 2

    try:
        wait_for(progressed, 300, "2 checkpoints")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    before = load_run(settings, run_id)
    assert before.steps["data"].status == "SUCCEEDED" and before.steps["train"].status == "RUNNING"

    out = subprocess.run([aimass_bin(), "run", "--resume", run_id, "--output", "json"], env=cli_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    after = load_run(settings, run_id)
    assert after.status == "SUCCEEDED"
    d0, d1 = before.steps["data"], after.steps["data"]
    assert (d1.executions, d1.started_at, d1.mlflow_run_id) == (d0.executions, d0.started_at, d0.mlflow_run_id), \
        "the completed data step was run again"
    assert after.steps["train"].executions == 2
    assert after.resumes == 1 and after.mlflow_run_id == before.mlflow_run_id
    tr = Tracker(settings.tracking_uri)
    assert int(tr.get_run(after.steps["train"].mlflow_run_id).tags["aimass.resumed_from_epoch"]) >= 1
    parents = tr.search_runs(after.experiment_id, f"tags.`aimass.run_id` = '{run_id}' and tags.`aimass.kind` = 'pipeline'")
    assert len(parents) == 1, "resume must continue the same MLflow run"
