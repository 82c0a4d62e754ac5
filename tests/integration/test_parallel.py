"""Independent steps run at the same time on a real local Ray cluster (the unit DAG tests use threads)."""

from __future__ import annotations

import pytest

from aimass.orchestrator import run_pipeline
from aimass.settings import Settings
from aimass.spec import parse_pipeline
from aimass.tracking import Tracker

pytestmark = pytest.mark.ray


def data_step(name: str, classes: int) -> dict:
    return {"name": name, "type": "data", "resources": {"cpu": 1},
            "config": {"source": "synthetic", "synthetic": {"numSamples": 100_000, "numFeatures": 64, "numClasses": classes}}}


def test_independent_steps_run_in_parallel_on_ray(local_ray, tmp_path):
    doc = {"apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": "fan-out"},
           "spec": {"seed": 3, "steps": [data_step("left", 3), data_step("right", 5)]}}
    settings = Settings.load(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"),
                             mlflow_artifact_location=str(tmp_path / "mlartifacts"), home=str(tmp_path))
    st = run_pipeline(parse_pipeline(doc, source="fan-out.yaml"), settings)
    assert st.status == "SUCCEEDED", st.error
    left, right = st.steps["left"], st.steps["right"]
    assert left.outputs["dataset"]["num_classes"] == 3 and right.outputs["dataset"]["num_classes"] == 5
    tracker = Tracker(settings.tracking_uri)
    runs = {r.name: r for r in tracker.child_runs(st.mlflow_run_id, st.experiment_id)}
    assert sorted(runs) == ["left", "right"]
    # When each step really ran, as seen from inside its task (the driver's started_at/finished_at are
    # submit and collect times, which overlap whenever both steps are submitted together, even if Ray
    # runs them one after the other): the step logs its metrics from inside the task at its very end
    # (MLflow stamps them there), and run_s is the time the task spent in the step's code.
    spans = {}
    for name, step in (("left", left), ("right", right)):
        metric = next(iter(runs[name].metrics))
        end = max(m.timestamp for m in tracker.client.get_metric_history(runs[name].run_id, metric)) / 1000
        spans[name] = (end - step.run_s, end)
    overlap = min(spans["left"][1], spans["right"][1]) - max(spans["left"][0], spans["right"][0])
    # one after the other, the overlap is at most one MLflow write (< 0.1 s); side by side, most of a step
    assert overlap > 0.5 * min(left.run_s, right.run_s), f"the two steps did not run at the same time: {spans}"
