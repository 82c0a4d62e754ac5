"""The MLflow UI features over the REST API of a real tracking server (PostgreSQL, proxied artifacts):
experiment kind, a cached step's copied results, reading an artifact back, version descriptions."""

from __future__ import annotations

import pytest

from aimass.tracking import Tracker
from aimass.tracking.client import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from tests.mlflow_server import mlflow_on_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_on_postgres(tmp_path_factory.mktemp("mlflow-ui")) as srv:
        yield srv


def test_ui_features_over_rest(server, tmp_path):
    tr = Tracker(server.url)
    exp = tr.ensure_experiment("ui-rest")
    assert tr.experiment_tags(exp)[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    bare = tr.client.create_experiment("ui-rest-bare")
    tr.ensure_experiment("ui-rest-bare")
    assert tr.experiment_tags(bare)[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    src = tr.start_run(exp, "evaluate")
    for step in range(3):
        tr.log_metrics(src, {"val_loss": 1.0 / (step + 1)}, step=step)
    tr.log_metrics(src, {"accuracy": 0.9, "step_duration_s": 4.0})
    tr.log_text(src, "not really a png", "plots/roc.png")
    tr.log_text(src, "kind: Pipeline\n", "pipeline.yaml")
    assert tr.read_text(src, "pipeline.yaml") == "kind: Pipeline\n"
    assert tr.read_text(src, "nope.yaml") is None

    dst = tr.start_run(exp, "evaluate (cached)")
    copied = tr.copy_run_results(src, dst)
    assert copied == {"metrics": ["accuracy", "val_loss"], "plots": ["plots/roc.png"]}
    run = tr.get_run(dst)
    assert run.metrics["accuracy"] == pytest.approx(0.9) and "step_duration_s" not in run.metrics
    assert tr.get_metric_history(dst, "val_loss") == tr.get_metric_history(src, "val_loss")
    assert f"#/experiments/{exp}/runs/{src}/artifacts/plots/roc.png" in run.tags["mlflow.note.content"]

    model = tr.client.create_registered_model("ui-rest-model")
    mv = tr.client.create_model_version(model.name, source=f"runs:/{src}/model", run_id=src)
    tr.set_model_version_description(model.name, mv.version, "### Gate\n**passed**")
    assert tr.model_version_description(model.name, mv.version) == "### Gate\n**passed**"
