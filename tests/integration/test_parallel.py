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
    assert left.started_at < right.finished_at and right.started_at < left.finished_at, "the two steps did not overlap"
    assert left.outputs["dataset"]["num_classes"] == 3 and right.outputs["dataset"]["num_classes"] == 5
    runs = Tracker(settings.tracking_uri).child_runs(st.mlflow_run_id, st.experiment_id)
    assert sorted(r.name for r in runs) == ["left", "right"]
