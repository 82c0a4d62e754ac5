"""Every table the CLI prints stays readable at 80 and 120 columns: cells fold, none is cut to ``…``,
nothing runs past the terminal's edge, and each cell's text is shown whole."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from tests.cli._render import assert_not_cut, render

WIDTHS = (80, 120)
LONG_URL = "http://127.0.0.1:8000/v2/models/digits-with-a-rather-long-name/versions/12/infer"
LONG_ERR = ("train failed: RayTaskError(ValueError): the dataset 'builtin:digits' has 64 features but the model card "
            "expects 784; check config.inputShape")


def cells_of(table) -> list[str]:
    """The plain text of every body cell of a rich table (markup removed)."""
    from rich.text import Text

    return [Text.from_markup(c).plain if isinstance(c, str) else c.plain for col in table.columns for c in col._cells]


def quickstart_state(repo_root):
    from aimass.orchestrator.state import RunState, StepState

    spec = yaml.safe_load((repo_root / "pipelines" / "quickstart.yaml").read_text())
    st = RunState(run_id="20261203-172000-abc123", pipeline="quickstart", spec=spec, spec_sha256="x", status="SUCCEEDED",
                  started_at=1000.0, finished_at=1095.2, experiment_id="1", mlflow_run_id="f" * 32,
                  tracking_uri="sqlite:////tmp/home/mlflow.db")

    def step(name, typ, outputs, **kw):
        return StepState(name=name, type=typ, status=kw.pop("status", "SUCCEEDED"), outputs=outputs, attempts=1,
                         duration_s=12.3, **kw)

    st.steps = {
        "data": step("data", "data", {"dataset": {"rows": 1797}}),
        "train": step("train", "train", {"train_metrics": {"final_val_accuracy": 0.97, "epochs_run": 8}}),
        "evaluate": step("evaluate", "evaluate", {"metrics": {"accuracy": 0.9722, "f1_macro": 0.9721, "roc_auc_ovr": 0.9993}}),
        "register": step("register", "register", {"model_uri": "models:/digits/3",
                                                  "model_version": {"name": "digits", "version": "3", "champion": True}}),
        "deploy": step("deploy", "deploy", {"endpoint": {
            "url": "http://127.0.0.1:8000", "infer_url": LONG_URL, "app": "aimass", "model": "digits",
            "registered": "digits", "version": "3"}}),
    }
    return st


@pytest.mark.parametrize("train_type", ["train", "tune"])
def test_run_summary_table(repo_root, train_type):
    from aimass.cli.progress import headline_metrics, summary_table

    st = quickstart_state(repo_root)
    st.steps["train"].type = train_type  # a step named unlike its type brings the type column back
    st.steps["train"].status, st.steps["train"].error = "FAILED", {"message": LONG_ERR}
    cells = [s.name for s in st.steps.values()] + [headline_metrics(s.outputs) for s in st.steps.values() if s.status == "SUCCEEDED"]
    for w in WIDTHS:
        text = render(summary_table(st), w)
        assert_not_cut(text, w, cells + [LONG_ERR])
        assert (" type " in text.splitlines()[2]) == (train_type != "train")


@pytest.mark.parametrize("names", [[str(i) for i in range(10)], [f"class-{i:02d}-{'x' * 12}" for i in range(40)]])
@pytest.mark.parametrize("show_all", [False, True])
def test_predict_table(names, show_all):
    from aimass.cli.serve import predictions, predictions_table

    probs = np.random.default_rng(0).dirichlet(np.ones(len(names)), size=4)
    preds = predictions(probs, names, len(names) if show_all else 3)
    text = {w: render(predictions_table("digits", "3", preds, show_all), w) for w in WIDTHS}
    for w in WIDTHS:
        cells = [p["class"] for p in preds] + [f"{c['class']}: {c['probability']:.3f}" for p in preds for c in p["top"]]
        assert_not_cut(text[w], w, cells)
    assert ("all classes" in text[80]) == show_all and ("top 3" in text[80]) != show_all


def test_serving_status_tables():
    from aimass.cli.serve import app_tables

    st = {"name": "aimass", "status": "RUNNING", "url": "http://127.0.0.1:8000", "auth": "token",
          "models": [{"name": "digits-with-a-rather-long-name", "kind": "dedicated", "registered": "digits-registry-name",
                      "version": "12", "challenger": "13", "canary_share": 0.1}],
          "deployments": {"digits-with-a-rather-long-name--12": {"status": "HEALTHY", "replicas": {"RUNNING": 2, "STARTING": 1}}},
          "events": [{"at": time.time(), "event": "rollout_started", "model": "digits", "version": "13",
                      "reason": "a new version was registered and the gate passed " * 2}]}
    for table in app_tables(st):
        cells = cells_of(table)
        for w in WIDTHS:
            assert_not_cut(render(table, w), w, cells)


def test_models_and_runs_tables():
    from aimass.cli.models import versions_table, zoo_table
    from aimass.cli.runs import runs_table

    now = time.time()
    tables = [
        zoo_table([{"name": "mlp", "description": "A multi-layer perceptron for tabular rows: hidden layers, dropout, "
                                                   "batch norm; the default of the quickstart"}]),
        versions_table([{"version": "12", "aliases": ["challenger", "champion"], "run_id": "f" * 32,
                         "tags": {"aimass.gate": "passed", "metric.accuracy": "0.972222"}}]),
        runs_table([{"run_id": "20261203-172000-abc123", "pipeline": "quickstart-with-a-long-name", "where": "k8s:ml-team-a",
                     "state": "FAILED", "started_at": now - 300, "finished_at": now, "message": LONG_ERR}]),
    ]
    for table in tables:
        cells = cells_of(table)
        for w in WIDTHS:
            assert_not_cut(render(table, w), w, cells)
    for w in WIDTHS:  # ids people copy stay on one line
        assert any("20261203-172000-abc123" in ln for ln in render(tables[2], w).splitlines())


def test_local_run_table(repo_root):
    from aimass.cli.runs import local_run_table

    st = quickstart_state(repo_root)
    for s in st.steps.values():
        s.mlflow_run_id = "e" * 32
    table = local_run_table(st)
    cells = cells_of(table)
    for w in WIDTHS:
        text = render(table, w)
        assert_not_cut(text, w, cells)
        assert any("e" * 32 in ln for ln in text.splitlines())


def test_doctor_lines():
    from aimass.cli.doctor import checks_table
    from aimass.diagnostics import Check

    checks = [Check("python", "ok", "Python 3.11.7 (/work/main/.venv/bin/python)"),
              Check("ports", "fail", "taken by another process: 6380 (Ray GCS) (pid 4242, redis-server), 8000 (Serve HTTP)",
                    "Stop what holds them, or choose free ports: AIMASS_RAY_PORT=<port>, AIMASS_SERVE_PORT=<port>."),
              Check("tracking", "fail", "postgresql://u:***@db.internal.example.com:5432/mlflow: cannot reach the database "
                    "at db.internal.example.com:5432 (no answer within 2s)", "Start it, or point AIMASS_TRACKING_URI elsewhere.")]
    for w in WIDTHS:
        assert_not_cut(render(checks_table(checks), w), w, [c.detail for c in checks] + [c.fix for c in checks if c.fix])
