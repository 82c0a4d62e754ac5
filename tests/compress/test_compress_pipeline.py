"""The compress step and the candidate gate as the orchestrator runs them, on a real local Ray cluster."""

from __future__ import annotations

import copy

import pytest
import yaml

from aimass.orchestrator import run_pipeline
from aimass.settings import Settings
from aimass.spec import parse_pipeline
from aimass.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def doc(repo_root):
    d = yaml.safe_load((repo_root / "pipelines" / "quickstart-compress.yaml").read_text())
    d["spec"]["steps"] = [s for s in d["spec"]["steps"] if s["type"] != "deploy"]  # serving is tested apart
    for s in d["spec"]["steps"]:
        if s["type"] == "train":
            s["config"].update({"epochs": 6, "modelArgs": {"hidden": [256, 128], "dropout": 0.0}})
        if s["type"] == "compress":
            s["config"]["measure"] = {"latencyIterations": 30, "throughputBatches": 5}
    return d


def _settings(tmp_path) -> Settings:
    return Settings.load(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"),
                         mlflow_artifact_location=str(tmp_path / "mlartifacts"), home=str(tmp_path))


def test_compress_measures_every_candidate_and_the_gate_registers_the_smallest_that_passes(local_ray, doc, tmp_path):
    settings = _settings(tmp_path)
    st = run_pipeline(parse_pipeline(doc, source="quickstart-compress.yaml"), settings)
    assert st.status == "SUCCEEDED", st.error
    rows = {r["name"]: r for r in st.steps["compress"].outputs["candidates"]}
    assert list(rows) == ["original", "int8", "pruned-50", "onnx"]
    orig, int8 = rows["original"], rows["int8"]
    assert int8["info"]["quantized_modules"] == ["net.1", "net.4", "net.7"]
    assert int8["size_mb"] < orig["size_mb"] / 2.5
    assert rows["onnx"]["info"]["parity"]["passed"] and rows["onnx"]["info"]["exporter"] == "dynamo"
    assert rows["pruned-50"]["info"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(r["latency_p50_ms"] > 0 and r["throughput_rows_s"] > 0 and r["metrics"]["accuracy"] > 0.85 for r in rows.values())

    passing = [r for r in rows.values() if orig["metrics"]["accuracy"] - r["metrics"]["accuracy"] <= 0.01 and r["latency_p50_ms"] <= 5]
    expected = min(passing, key=lambda r: (r["size_mb"], -r["metrics"]["accuracy"]))["name"]
    mv = st.steps["register"].outputs["model_version"]
    tracker = Tracker(settings.tracking_uri)
    tags = next(v["tags"] for v in tracker.model_versions("digits-compact") if v["version"] == mv["version"])
    assert tags["aimass.candidate"] == expected and tags["aimass.compression"] == rows[expected]["method"]
    assert tags["aimass.parent_model_key"] == st.steps["train"].outputs["model"]["key"]
    assert float(tags["metric.size_mb"]) == pytest.approx(rows[expected]["size_mb"], rel=1e-3)
    assert mv["champion"] is True

    # the trade-off report is in the compress step's MLflow run: a table, the JSON rows and the plot
    runs = {r.name: r for r in tracker.child_runs(st.mlflow_run_id, st.experiment_id)}
    rid = runs["compress"].run_id
    names = {a.path for a in tracker.client.list_artifacts(rid)} | {a.path for a in tracker.client.list_artifacts(rid, "plots")}
    assert {"tradeoff.md", "tradeoff.json", "plots/tradeoff.png"} <= names
    assert runs["compress"].metrics["int8.size_mb"] == pytest.approx(int8["size_mb"])

    # impossible constraints: every candidate's numbers reported, nothing registered, the run stops at register
    bad = copy.deepcopy(doc)
    bad["metadata"]["name"] = "compress-impossible"
    for s in bad["spec"]["steps"]:
        if s["type"] == "register":
            s["config"]["modelName"] = "never-registered"
            s["config"]["gate"]["maxSizeMb"] = 0.001
    before = {m.name for m in tracker.client.search_registered_models()}
    st2 = run_pipeline(parse_pipeline(bad, source="impossible.yaml"), settings)
    assert st2.status == "FAILED"
    err = st2.steps["register"].error or st2.error
    assert "no candidate passes the gate" in str(err)
    for name in ("original", "int8", "pruned-50", "onnx"):
        assert f"{name}: accuracy=" in str(err)
    assert "never-registered" not in {m.name for m in tracker.client.search_registered_models()} - before


def test_an_ensemble_pipeline_registers_one_model_with_pinned_members(local_ray, repo_root, tmp_path):
    d = yaml.safe_load((repo_root / "pipelines" / "ensemble.yaml").read_text())
    d["spec"]["steps"] = [s for s in d["spec"]["steps"] if s["type"] != "deploy"]
    settings = _settings(tmp_path)
    st = run_pipeline(parse_pipeline(d, source="ensemble.yaml"), settings)
    assert st.status == "SUCCEEDED", st.error
    rep = st.steps["ensemble"].outputs["ensemble_report"]
    member_keys = [st.steps[n].outputs["model"]["key"] for n in ("linear", "mlp-small", "mlp-wide")]
    assert [m["source"] for m in rep["members"].values()] == member_keys  # every dependsOn model, in order
    assert len(rep["params"]["weights"]) == 3
    assert rep["ensemble"]["accuracy"] >= min(m["accuracy"] for m in rep["members"].values())
    assert st.steps["evaluate"].outputs["metrics"]["accuracy"] == pytest.approx(rep["ensemble"]["accuracy"])

    from aimass.models.io import load_model

    tracker = Tracker(settings.tracking_uri)
    mv = st.steps["register"].outputs["model_version"]
    model = load_model(tracker.download_model_dir(f"models:/wine-ensemble/{mv['version']}"))
    assert type(model).__name__ == "EnsembleModel" and len(model.members) == 3
    assert [m["key"] for m in model.card.args["members"]] == member_keys
