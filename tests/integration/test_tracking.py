"""Tracking and registry against a real MLflow server on the local PostgreSQL (and the SQLite default)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from aimass.exceptions import NotFoundError, TrackingError
from aimass.models import ModelCard, build_model
from aimass.models.io import load_model, save_model
from aimass.spec.configs.register import GateConfig, Threshold
from aimass.steps.register import gate_decision
from aimass.tracking import Tracker
from tests.mlflow_server import mlflow_on_postgres


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with mlflow_on_postgres(tmp_path_factory.mktemp("mlflow")) as srv:
        yield srv


def small_model(tmp_path):
    card = ModelCard("mlp", [4], 3, {"hidden": [8]}, class_names=["a", "b", "c"])
    model = build_model(card)
    return model, save_model(model, tmp_path / "m")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres-server", marks=pytest.mark.postgres)])
def test_runs_models_aliases_and_download(backend, request, tmp_path):
    # only the PostgreSQL case starts (and needs) the MLflow server
    uri = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else request.getfixturevalue("mlflow_server").url
    tr = Tracker(uri)
    exp = tr.ensure_experiment("tracking-test", str(tmp_path / "art") if backend == "sqlite" else None)
    parent = tr.start_run(exp, "pipeline", {"aimass.kind": "pipeline"})
    child = tr.start_run(exp, "register", {"aimass.kind": "step"}, parent_run_id=parent)
    tr.log_params(child, {"optimizer": {"lr": 0.1, "name": "adam"}})
    tr.log_metrics(child, {"accuracy": 0.9, "nan_is_dropped": float("nan")}, step=1)
    model, mdir = small_model(tmp_path)
    model_uri = tr.log_model(child, mdir, [4], 3, input_example=np.zeros((2, 4), np.float32))
    v1 = tr.register(model_uri, "tracking-model", run_id=child, tags={"metric.accuracy": "0.9"})
    tr.set_alias("tracking-model", "champion", v1)
    v2 = tr.register(model_uri, "tracking-model", run_id=child)
    assert int(v2) == int(v1) + 1
    assert tr.version_by_alias("tracking-model", "champion")["version"] == v1
    assert tr.resolve_model_uri("models:/tracking-model@champion")["version"] == v1
    with pytest.raises(NotFoundError, match="alias 'nope'"):
        tr.resolve_model_uri("models:/tracking-model@nope")
    d = tr.download_model_dir("models:/tracking-model@champion", tmp_path / "dl")
    again = load_model(d)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    import torch

    assert torch.allclose(again.predict_proba(torch.as_tensor(x)), model.predict_proba(torch.as_tensor(x)))
    runs = tr.child_runs(parent, exp)
    assert [r.run_id for r in runs] == [child]
    assert runs[0].params["optimizer.lr"] == "0.1" and runs[0].metrics == {"accuracy": 0.9}
    tr.end_run(child)
    tr.end_run(parent)
    assert tr.get_run(parent).status == "FINISHED"


@pytest.mark.postgres
def test_tracking_server_outage_is_retried_without_duplicates(mlflow_server):
    srv = mlflow_server
    tr = Tracker(srv.url, retry_for_s=90)
    exp = tr.ensure_experiment("outage")
    run = tr.start_run(exp, "train")
    tr.log_metrics(run, {"loss": 1.0}, step=1)
    srv.stop()
    threading.Timer(3.0, srv.start).start()
    t0 = time.time()
    tr.log_metrics(run, {"loss": 0.5}, step=2)  # blocks, retrying, until the server is back
    assert time.time() - t0 >= 2.5
    assert tr.get_metric_history(run, "loss") == [(1, 1.0), (2, 0.5)]


def test_tracking_down_for_good_fails_with_a_clear_error(tmp_path):
    tr = Tracker("http://127.0.0.1:9", retry_for_s=2)
    with pytest.raises(TrackingError, match="unreachable") as ei:
        tr.ensure_experiment("x")
    assert ei.value.retryable


def test_register_gate():
    gate = GateConfig(thresholds=[Threshold(metric="accuracy", min=0.8)], compare_metric="accuracy", min_improvement=0.0)
    assert gate_decision(gate, {"accuracy": 0.9}, None)[0]
    assert not gate_decision(gate, {"accuracy": 0.7}, None)[0]
    assert gate_decision(gate, {"accuracy": 0.9}, {"accuracy": 0.85})[0]
    ok, why = gate_decision(gate, {"accuracy": 0.84}, {"accuracy": 0.85})
    assert not ok and "not better" in why[-1]
    ok, why = gate_decision(gate, {}, None)
    assert not ok and "not measured" in why[0]
