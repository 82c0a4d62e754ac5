"""The README's main job, through the CLI a user types: the quickstart pipeline end to end on the
embedded default (local Ray cluster, MLflow on SQLite, local artifacts), then a served prediction."""

from __future__ import annotations

import json
import subprocess

import pytest

from aimass.settings import Settings
from aimass.tracking import Tracker
from tests.conftest import aimass_bin, cli_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def aimass(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([aimass_bin(), *args], env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quickstart_run(local_ray, repo_root):
    out = aimass("run", str(repo_root / "pipelines" / "quickstart.yaml"), "--output", "json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


def test_quickstart_runs_end_to_end(quickstart_run):
    st = quickstart_run
    assert st["status"] == "SUCCEEDED"
    assert list(st["steps"]) == ["data", "train", "evaluate", "register", "deploy"]
    metrics = st["steps"]["evaluate"]["outputs"]["metrics"]
    assert metrics["accuracy"] > 0.85 and metrics["f1_macro"] > 0.85 and metrics["roc_auc_ovr"] > 0.95
    assert st["steps"]["register"]["outputs"]["model_uri"].startswith("models:/digits/")
    assert st["steps"]["train"]["outputs"]["train_metrics"]["epochs_run"] >= 3


def test_served_prediction(quickstart_run, repo_root):
    out = aimass("predict", "digits", "--input", f"@{repo_root / 'pipelines' / 'examples' / 'digits-request.json'}", "--output", "json")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    body = json.loads(out.stdout)
    text = json.dumps(body)
    assert "probabilities" in text
    preds = body["predictions"]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in preds)
    # The served answer is exactly the registered champion's answer on the same rows.
    import numpy as np
    import torch

    from aimass.models.io import load_model

    request = json.loads((repo_root / "pipelines" / "examples" / "digits-request.json").read_text())
    rows = np.asarray(request["inputs"][0]["data"], dtype=np.float32)
    s = Settings.load()
    model = load_model(Tracker(s.tracking_uri).download_model_dir("models:/digits@champion"))
    expected = model.predict_proba(torch.as_tensor(rows)).numpy()
    assert [p["class"] for p in preds] == [model.card.class_names[i] for i in expected.argmax(1)]
    got = np.array([[p["probabilities"][c] for c in model.card.class_names] for p in preds])
    assert np.allclose(got, expected, atol=1e-5)
    assert sum(p["class"] == want for p, want in zip(preds, ["0", "1", "2"], strict=False)) >= 2  # and it reads digits


def test_mlflow_has_the_run_tree_and_the_registered_model(quickstart_run):
    s = Settings.load()
    tr = Tracker(s.tracking_uri)
    parent = tr.get_run(quickstart_run["mlflow_run_id"])
    assert parent.tags["aimass.kind"] == "pipeline" and parent.status == "FINISHED"
    children = {c.name: c for c in tr.child_runs(parent.run_id, parent.experiment_id)}
    assert set(children) == {"data", "train", "evaluate", "register", "deploy"}
    assert len(tr.get_metric_history(children["train"].run_id, "val_accuracy")) >= 3  # per-epoch curve
    ev = tr.client.list_artifacts(children["evaluate"].run_id, "plots")
    assert {"plots/confusion_matrix.png", "plots/learning_curves.png", "plots/roc_ovr.png"} <= {a.path for a in ev}
    version = quickstart_run["steps"]["register"]["outputs"]["model_version"]["version"]
    assert tr.version_by_alias("digits", "challenger")["version"] == version
    assert tr.version_by_alias("digits", "champion")["version"] == version  # the gate passed


def test_rerun_is_cached_and_listed(quickstart_run, repo_root):
    out = aimass("run", str(repo_root / "pipelines" / "quickstart.yaml"), "--output", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads(out.stdout)
    cached = [n for n, s in again["steps"].items() if s["cached"]]
    assert cached[:4] == ["data", "train", "evaluate", "register"]
    runs = aimass("runs", "list", "--output", "json")
    assert runs.returncode == 0, runs.stderr
    assert {quickstart_run["run_id"], again["run_id"]} <= {r.get("run_id") or r.get("id") for r in json.loads(runs.stdout)}
    show = aimass("runs", "show", quickstart_run["run_id"])
    assert show.returncode == 0 and "evaluate" in show.stdout
