"""What a reviewer sees in the MLflow UI: cached steps keep their metrics and plot links, experiments open
in the model-training view, and every registered version says what it is (real MLflow on SQLite, no Ray)."""

from __future__ import annotations

import io
from typing import ClassVar

import pytest

from aimass.orchestrator import run_pipeline
from aimass.orchestrator.executors import ThreadStepRunner
from aimass.settings import Settings
from aimass.spec import parse_pipeline
from aimass.spec.configs.base import StepConfig
from aimass.steps import Step, register_step
from aimass.tracking import Tracker
from aimass.tracking.client import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG


class CurveConfig(StepConfig):
    OUTPUTS: ClassVar[tuple[str, ...]] = ("value",)

    epochs: int = 3


class CurveStep(Step):
    """Logs a per-epoch curve, a final metric and a plot, like a train or evaluate step."""

    type_name = "uicurve"

    def run(self, ctx, config):
        for epoch in range(config.epochs):
            ctx.log_metrics({"val_loss": 1.0 / (epoch + 1)}, step=epoch)
        ctx.log_metrics({"accuracy": 0.9})
        png = io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
        ctx.tracker.log_text(ctx.mlflow_run_id, png.getvalue().decode("latin-1"), "plots/curve.png")
        return {"value": 1}


register_step("uicurve", CurveStep, CurveConfig)


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    # one MLflow database for the module: creating (migrating) a SQLite store costs seconds
    tmp_path = tmp_path_factory.mktemp("ui")
    return Settings.load(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"),
                         mlflow_artifact_location=str(tmp_path / "mlartifacts"), home=str(tmp_path))


def go(settings: Settings, experiment: str = "ui-test"):
    spec = {"apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": "ui"},
            "spec": {"seed": 1, "experiment": experiment, "steps": [{"name": "fit", "type": "uicurve"}]}}
    return run_pipeline(parse_pipeline(spec), settings, runner=ThreadStepRunner(), connect=False)


def test_a_cached_step_shows_the_metrics_and_plots_of_its_source_run(settings):
    first = go(settings)
    second = go(settings)
    assert second.steps["fit"].cached
    tr = Tracker(settings.tracking_uri)
    src = tr.get_run(first.steps["fit"].mlflow_run_id)
    cached = tr.get_run(second.steps["fit"].mlflow_run_id)
    assert cached.run_id != src.run_id and cached.tags["aimass.cached"] == "true"
    assert cached.metrics["accuracy"] == pytest.approx(0.9)
    assert tr.get_metric_history(cached.run_id, "val_loss") == tr.get_metric_history(src.run_id, "val_loss")
    assert len(tr.get_metric_history(cached.run_id, "val_loss")) == 3
    assert "step_duration_s" not in cached.metrics  # the source's timings are not this run's
    assert cached.tags["aimass.cache_source_mlflow_run"] == src.run_id
    note = cached.tags["mlflow.note.content"]
    assert f"#/experiments/{src.experiment_id}/runs/{src.run_id}/artifacts/plots/curve.png" in note
    assert cached.tags["aimass.plot.curve.png"] == f"runs:/{src.run_id}/plots/curve.png"
    # a cache entry written before entries recorded their MLflow run is found through the run's tags
    import json

    from aimass.storage import get_store

    store = get_store(settings.artifact_root)
    key = f"cache/{second.steps['fit'].cache_key}.json"
    entry = json.loads(store.get_bytes(key))
    entry.pop("mlflow_run_id")
    store.put_bytes(key, json.dumps(entry).encode())
    third = go(settings)
    assert tr.get_run(third.steps["fit"].mlflow_run_id).tags["aimass.cache_source_mlflow_run"] == src.run_id


def test_experiments_open_in_the_model_training_view(settings):
    st = go(settings, experiment="ui-kind")
    tr = Tracker(settings.tracking_uri)
    assert tr.experiment_tags(st.experiment_id)[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    # an existing experiment without a kind gets one; a kind someone chose in the UI is kept
    bare = tr.client.create_experiment("ui-bare")
    assert tr.ensure_experiment("ui-bare") == bare
    assert tr.experiment_tags(bare)[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    tr.client.set_experiment_tag(bare, EXPERIMENT_KIND_TAG, "finetuning")
    tr.ensure_experiment("ui-bare")
    assert tr.experiment_tags(bare)[EXPERIMENT_KIND_TAG] == "finetuning"


def test_each_registered_version_has_a_description(settings, tmp_path):
    from aimass.models import ModelCard, build_model
    from aimass.models.io import save_model
    from aimass.spec.configs.register import RegisterConfig
    from aimass.steps.base import StepContext
    from aimass.steps.register import RegisterStep

    tr = Tracker(settings.tracking_uri)
    exp = tr.ensure_experiment("ui-register", settings.mlflow_artifact_location)
    spec_yaml = """\
apiVersion: aimass.io/v1alpha1
kind: Pipeline
metadata: {name: digits}
spec:
  steps:
    - {name: data, type: data, config: {source: "builtin:digits"}}
    - {name: other-data, type: data, config: {source: "builtin:iris"}}
    - {name: train, type: train, dependsOn: [data]}
    - {name: evaluate, type: evaluate, dependsOn: [data, train]}
    - {name: register, type: register, dependsOn: [train, evaluate], config: {modelName: m}}
"""
    parent = tr.start_run(exp, "digits-r1", {"aimass.kind": "pipeline"})
    tr.log_text(parent, spec_yaml, "pipeline.yaml")
    runs = {}
    for name, typ, tags in [("data", "data", {}), ("other-data", "data", {}), ("train", "train", {"aimass.cached": "true",
                            "aimass.cache_source_run": "r0"}), ("evaluate", "evaluate", {})]:
        runs[name] = tr.start_run(exp, name, {"aimass.step": name, "aimass.step_type": typ, **tags}, parent_run_id=parent)
    tr.log_params(runs["data"], {"config.source": "builtin:digits"})
    tr.log_metrics(runs["data"], {"rows_train": 1257, "rows_test": 180})
    reg_run = tr.start_run(exp, "register", {"aimass.step": "register", "aimass.step_type": "register"}, parent_run_id=parent)

    card = ModelCard("mlp", [4], 3, {"hidden": [8]}, class_names=["a", "b", "c"])
    model_dir = save_model(build_model(card), tmp_path / "m")
    ctx = StepContext(run_id="r1", pipeline="digits", step_name="register", step_type="register", inputs={},
                      artifact_root=settings.artifact_root, prefix="runs/r1/steps/register", tracking_uri=settings.tracking_uri,
                      registry_uri=None, experiment_id=exp, mlflow_run_id=reg_run, seed=1, work_dir=str(tmp_path / "work"))
    ctx.store.put_dir(model_dir, "runs/r1/steps/train/model")
    ctx.inputs = {"model": {"key": "runs/r1/steps/train/model", "root": ctx.store.root_uri, "card": card.to_dict()},
                  "metrics": {"accuracy": 0.93, "f1_macro": 0.91}}
    cfg = RegisterConfig.model_validate({"modelName": "ui-desc", "description": "Digits classifier.",
                                         "gate": {"thresholds": [{"metric": "accuracy", "min": 0.9}]}})
    out = RegisterStep().run(ctx, cfg)
    text = tr.model_version_description("ui-desc", out["model_version"]["version"])

    assert text.startswith("Digits classifier.")
    assert "**passed**: this version is `champion`." in text and "accuracy=0.9300 passes" in text
    assert "| accuracy | 0.93 |" in text and "| f1_macro | 0.91 |" in text
    assert "step `data`: `builtin:digits` (rows: test 180, train 1257)" in text
    assert "input shape [4], 3 classes: a, b, c" in text
    assert f"([MLflow run](#/experiments/{exp}/runs/{parent}))" in text
    assert f"- step `train` (train): [run](#/experiments/{exp}/runs/{runs['train']}), served from the cache of run `r0`" in text
    assert f"#/experiments/{exp}/runs/{runs['evaluate']}" in text
    assert "other-data" not in text  # not upstream of this register step
    assert 'model `mlp` {"hidden": [8]}' in text and f"[the register step](#/experiments/{exp}/runs/{reg_run})" in text
