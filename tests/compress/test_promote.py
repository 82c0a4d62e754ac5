"""`champion` moves only through the gate; a manual move needs --force and a --reason recorded on the version."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    from aimass.models.io import save_model
    from aimass.models.registry import ModelCard, build_model
    from aimass.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("AIMASS_TRACKING_URI", uri)
    t = Tracker(uri)
    exp = t.ensure_experiment("promote", artifact_location=str(tmp_path / "art"))
    d = tmp_path / "m"
    save_model(build_model(ModelCard(name="logreg", input_shape=[3], num_classes=2)), d)
    for _ in range(2):
        run = t.start_run(exp, "r")
        t.register(t.log_model(run, d, [3], 2), "pm", run_id=run)
        t.end_run(run)
    t.set_alias("pm", "champion", "1")
    return t


def _cli(*args):
    from aimass.cli.main import app

    return CliRunner().invoke(app, ["models", "promote", *args, "-o", "json"])


def test_champion_moves_by_hand_only_with_force_and_a_recorded_reason(registry):
    r = _cli("pm", "2")
    assert r.exit_code == 1 and "'champion' moves only through the register gate" in r.output
    r = _cli("pm", "2", "--force")
    assert r.exit_code == 1 and "--force needs a --reason" in r.output
    assert registry.version_by_alias("pm", "champion")["version"] == "1"  # nothing moved
    r = _cli("pm", "9", "--force", "--reason", "x")
    assert r.exit_code == 1 and "has no version 9" in r.output

    r = _cli("pm", "2", "--force", "--reason", "rollback after incident 42")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"name": "pm", "alias": "champion", "version": "2", "previous": "1", "forced": True}
    mv = registry.version_by_alias("pm", "champion")
    assert mv["version"] == "2"
    assert mv["tags"]["aimass.manual_promotion_reason"] == "rollback after incident 42"
    assert mv["tags"]["aimass.manual_promotion_previous"] == "1" and mv["tags"]["aimass.manual_promotion"] == "champion"

    r = _cli("pm", "1", "--alias", "staging")  # other aliases are not gated
    assert r.exit_code == 0 and registry.version_by_alias("pm", "staging")["version"] == "1"
