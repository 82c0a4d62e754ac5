"""The register step's gate end to end: a version that fails the gate becomes the challenger and the
champion stays where it was (in the registry, and in what `models:/NAME@champion` resolves to)."""

from __future__ import annotations

import pytest

from aimass.orchestrator import run_pipeline
from aimass.spec import parse_pipeline
from aimass.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def gated(name: str, gate: dict) -> dict:
    return {
        "apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {"seed": 5, "steps": [
            {"name": "data", "type": "data", "config": {"source": "builtin:iris"}},
            {"name": "train", "type": "train", "dependsOn": ["data"], "cache": False, "config": {
                "model": "mlp", "modelArgs": {"hidden": [8]}, "numWorkers": 1, "epochs": 1, "batchSize": 32}},
            {"name": "evaluate", "type": "evaluate", "dependsOn": ["data", "train"]},
            {"name": "register", "type": "register", "dependsOn": ["train", "evaluate"],
             "config": {"modelName": "gated", "gate": gate}},
        ]},
    }


def test_a_version_that_fails_the_gate_leaves_the_champion_in_place(local_ray, own_settings):
    first = run_pipeline(parse_pipeline(gated("gate-a", {"thresholds": [{"metric": "accuracy", "min": 0.0}]})), own_settings)
    assert first.status == "SUCCEEDED", first.error
    assert first.steps["register"].outputs["model_version"]["champion"] is True
    # the second version must beat the champion's accuracy by 2 (impossible): the gate fails
    second = run_pipeline(parse_pipeline(gated("gate-b", {"compareMetric": "accuracy", "minImprovement": 2.0})), own_settings)
    assert second.status == "SUCCEEDED", second.error
    mv = second.steps["register"].outputs["model_version"]
    assert mv["champion"] is False and any("not better" in r for r in mv["gate"]), mv
    tr = Tracker(own_settings.tracking_uri, own_settings.registry_uri)
    assert tr.version_by_alias("gated", "champion")["version"] == "1"
    assert tr.version_by_alias("gated", "challenger")["version"] == "2"
    assert tr.resolve_model_uri("models:/gated@champion")["version"] == "1"
    tags = {v["version"]: v["tags"] for v in tr.model_versions("gated")}
    assert tags["1"]["aimass.gate"] == "passed" and tags["2"]["aimass.gate"] == "failed"
