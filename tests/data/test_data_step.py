"""The data step of every example pipeline, against a real MLflow store: outputs, split manifest, statistics and the
dataset input; a bad input writes nothing; evaluate on a table data set with a trained zoo model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aimass.data import open_dataset
from aimass.data.examples import make_all
from aimass.exceptions import SpecError
from aimass.spec import load_pipeline
from aimass.spec.configs.data import DataConfig
from aimass.spec.configs.evaluate import EvaluateConfig
from aimass.steps.base import StepContext
from aimass.steps.data import DataStep
from aimass.steps.evaluate import EvaluateStep
from aimass.storage import get_store
from aimass.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ["image-shapes", "text-reviews", "table-customers", "regression-diabetes"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("datastep")
    # the example pipelines name paths relative to where aimass runs: lay the data out the same way
    data = make_all(root / "pipelines" / "examples" / "data")
    shutil.copy(REPO / "pipelines" / "examples" / "data" / "reviews.jsonl", data / "reviews.jsonl")
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    tr = Tracker(tracking)
    exp = tr.ensure_experiment("data-tests", str(root / "mlartifacts"))
    return {"root": root, "store": get_store(str(root / "artifacts")), "tracking": tracking, "tracker": tr, "exp": exp}


def ctx_for(env, name: str, step: str = "data", inputs: dict | None = None) -> StepContext:
    run = env["tracker"].start_run(env["exp"], name)
    return StepContext(run_id=name, pipeline=name, step_name=step, step_type=step, inputs=inputs or {},
                       artifact_root=env["store"].root_uri, prefix=f"runs/{name}/steps/{step}", tracking_uri=env["tracking"],
                       registry_uri=None, experiment_id=env["exp"], mlflow_run_id=run, seed=3, work_dir=str(env["root"] / name))


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_pipeline_data_step_runs_and_logs(env, example, monkeypatch):
    monkeypatch.chdir(env["root"])
    spec = load_pipeline(REPO / "pipelines" / f"{example}.yaml")
    cfg = spec.step("data").parsed_config
    ctx = ctx_for(env, example)
    out = DataStep().run(ctx, cfg)
    ref = out["dataset"]
    assert ref["modality"] == cfg.modality and len(ref["digest"]) == 64 and ref["manifest_key"].endswith("split.json")
    manifest = json.loads(env["store"].get_bytes(ref["manifest_key"]))
    assert manifest["digest"] == ref["digest"] and sum(len(v) for v in manifest["splits"].values()) == sum(ref["counts"].values())
    ds = open_dataset(ref, store=env["store"])
    assert [t.name for t in ds.targets] == [t.name for t in cfg.target_configs()]
    client = env["tracker"].client
    run = client.get_run(ctx.mlflow_run_id)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == ref["digest"][:36]
    assert json.loads(inputs[0].dataset.source)["uri"] == cfg.source and json.loads(inputs[0].dataset.schema)["modality"] == cfg.modality
    arts = {a.path for a in client.list_artifacts(ctx.mlflow_run_id, "stats")}
    expected = {"stats/class_counts.json"} if ds.targets[0].kind != "regression" else set()
    expected |= {f"stats/class_balance_{t.name}.png" for t in ds.targets if t.kind != "regression"}
    expected |= {"image-shapes": {"stats/image_sizes.png"}, "text-reviews": {"stats/text_lengths.png"},
                 "table-customers": {"stats/columns.json"}, "regression-diabetes": {"stats/columns.json"}}[example]
    assert expected <= arts, (expected - arts)
    assert run.data.metrics["rows_train"] == ref["counts"]["train"]


def test_a_bad_input_fails_clearly_and_writes_nothing(env, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,label\n1,a\n2,b,3\n")
    ctx = ctx_for(env, "bad")
    with pytest.raises(SpecError, match="line 3 has 3 fields"):
        DataStep().run(ctx, DataConfig.model_validate({"source": str(bad), "modality": "table"}))
    assert env["store"].list("runs/bad") == []


def test_evaluate_table_classification_with_a_trained_zoo_model(env, monkeypatch):
    from aimass.models import ModelCard, build_model
    from aimass.models.io import save_model

    monkeypatch.chdir(env["root"])
    cfg = DataConfig.model_validate({"source": "pipelines/examples/data/customers.csv", "modality": "table", "labelColumn": "churn"})
    ref = DataStep().run(ctx_for(env, "evaltable"), cfg)["dataset"]
    ds = open_dataset(ref, store=env["store"])
    card = ModelCard(name="logreg", input_shape=ref["input_shape"], num_classes=ref["num_classes"], class_names=ref["class_names"],
                     feature_mean=[float(v) for v in ds.feature_mean], feature_scale=[float(v) for v in ds.feature_scale])
    torch.manual_seed(0)
    model = build_model(card)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.as_tensor(ds.x_train), torch.as_tensor(ds.y_train)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    save_model(model, env["root"] / "m")
    env["store"].put_dir(env["root"] / "m", "runs/evaltable/steps/train/model")
    ectx = ctx_for(env, "evaltable-eval", "evaluate",
                   {"dataset": ref, "model": {"key": "runs/evaltable/steps/train/model", "root": env["store"].root_uri, "history": []}})
    out = EvaluateStep().run(ectx, EvaluateConfig.model_validate({"split": "test"}))
    m = out["metrics"]
    assert 0.6 < m["accuracy"] <= 1 and m["roc_auc_ovr"] > 0.6 and set(out["report"]["per_class"]) == {"no", "yes"}
    with torch.no_grad():
        direct = model.predict_proba(torch.as_tensor(ds.x_test)).numpy().argmax(1)
    assert m["accuracy"] == pytest.approx(float((direct == ds.y_test).mean()))
    arts = {a.path for a in env["tracker"].client.list_artifacts(ectx.mlflow_run_id, "plots")}
    assert "plots/confusion_matrix.png" in arts
    assert np.isfinite(m["log_loss"])


def test_evaluation_of_several_target_kinds_is_logged_with_plots(env):
    from aimass.data import Dataset, TargetSpec
    from aimass.steps.evaluate import log_evaluation

    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, n)
    ml = (rng.random((n, 2)) < 0.5).astype(np.float32)
    reg = rng.normal(size=(n, 1)).astype(np.float32)
    x = np.zeros((n, 1), np.float32)
    ds = Dataset(x, y, x, y, x, y, ["a", "b"], np.zeros(1, np.float32), np.ones(1, np.float32), modality="table",
                 targets=[TargetSpec("kind", "classification", ["a", "b"]), TargetSpec("tags", "multilabel", ["t1", "t2"]),
                          TargetSpec("size", "regression", ["size"])],
                 extra_y={"tags": {s: ml for s in ("train", "val", "test")}, "size": {s: reg for s in ("train", "val", "test")}})
    outputs = {"kind": np.eye(2)[y] * 0.7 + 0.15, "tags": np.clip(ml * 0.8 + rng.random((n, 2)) * 0.3, 0, 1),
               "size": reg + rng.normal(0, 0.1, (n, 1))}
    ctx = ctx_for(env, "multi-eval", "evaluate")
    metrics, report = log_evaluation(ctx, ds, ds.targets_split("test"), outputs)
    assert metrics["accuracy"] == 1.0 and metrics["kind.accuracy"] == 1.0
    assert metrics["tags.f1_micro"] > 0.8 and "tags.roc_auc_t1" in metrics and 0 < metrics["size.rmse"] < 0.2
    assert set(report["targets"]) == {"kind", "tags", "size"} and set(report["per_class"]) == {"a", "b"}
    client = env["tracker"].client
    plots = {a.path for a in client.list_artifacts(ctx.mlflow_run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/residuals_size.png", "plots/label_auc_tags.png"} <= plots
    logged = client.get_run(ctx.mlflow_run_id).data.metrics
    assert logged["size.r2"] == pytest.approx(metrics["size.r2"]) and "evaluation_report.json" in {
        a.path for a in client.list_artifacts(ctx.mlflow_run_id)}


def test_two_head_table_model_trained_on_the_data_step_output_is_evaluated_per_target(env, monkeypatch):
    """The data <-> model contract end to end, in process: table data with a class and a numeric target ->
    the train step's card -> tab-mlp trained with the training loop's epoch code -> evaluate via predict_heads."""
    from aimass.models import ModelCard, build_model
    from aimass.models.io import save_model
    from aimass.spec.configs.train import TrainConfig
    from aimass.steps.train import model_card_for
    from aimass.training.loop import split_data
    from tests.models._support import fit

    monkeypatch.chdir(env["root"])
    cfg = load_pipeline(REPO / "pipelines" / "table-customers.yaml").step("data").parsed_config
    ref = DataStep().run(ctx_for(env, "twohead"), cfg)["dataset"]
    ds = open_dataset(ref, store=env["store"])
    card = ModelCard.from_dict(model_card_for(TrainConfig.model_validate({"model": "tab-mlp"}), ref, ds))
    torch.manual_seed(0)
    model = build_model(card)
    fit(model, split_data(model, ds, "train"), split_data(model, ds, "val"), epochs=30, lr=3e-3)
    save_model(model, env["root"] / "twohead-model")
    env["store"].put_dir(env["root"] / "twohead-model", "runs/twohead/steps/train/model")
    ectx = ctx_for(env, "twohead-eval", "evaluate",
                   {"dataset": ref, "model": {"key": "runs/twohead/steps/train/model", "root": env["store"].root_uri, "history": []}})
    out = EvaluateStep().run(ectx, EvaluateConfig.model_validate({"split": "test"}))
    m = out["metrics"]
    assert m["accuracy"] == m["churn.accuracy"] and m["accuracy"] > 0.6
    spend = ds.targets_split("test")["spend"]
    baseline_rmse = float(np.sqrt(((spend - ds.targets_split("train")["spend"].mean()) ** 2).mean()))
    assert m["spend.rmse"] < baseline_rmse and m["spend.r2"] > 0.3  # the regression head learned from the data
    assert set(out["report"]["targets"]) == {"churn", "spend"}
    plots = {a.path for a in env["tracker"].client.list_artifacts(ectx.mlflow_run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/residuals_spend.png"} <= plots
