"""Updating a model the documented way, end to end on a local Ray cluster: a pipeline trains and registers a
champion; a second pipeline fine-tunes ``models:/NAME@champion`` and starts at the champion's loss, with
lineage tags linking it to the version it started from."""

from __future__ import annotations

import pytest

from aimass.orchestrator import run_pipeline
from aimass.settings import Settings
from aimass.spec import parse_pipeline
from aimass.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def spec(name: str, train_extra: dict, epochs: int) -> dict:
    return {
        "apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {"seed": 3, "steps": [
            {"name": "data", "type": "data", "config": {"source": "builtin:digits", "normalize": "standard"}},
            {"name": "train", "type": "train", "dependsOn": ["data"], "cache": False, "config": {
                "model": "mlp", "modelArgs": {"hidden": [32], "dropout": 0.0}, "numWorkers": 1, "epochs": epochs,
                "batchSize": 64, "optimizer": {"name": "adam", "lr": 0.003}, "maxFailures": 0, **train_extra}},
            {"name": "register", "type": "register", "dependsOn": ["train"], "config": {"modelName": "champ-update"}},
        ]},
    }


def test_finetuning_the_champion_starts_at_its_loss(local_ray):
    settings = Settings.load()
    first = run_pipeline(parse_pipeline(spec("champ-a", {}, 4)), settings)
    assert first.status == "SUCCEEDED", first
    hist = first.steps["train"].outputs["model"]["history"]
    champion_val_loss = hist[-1]["val_loss"]
    version = first.steps["register"].outputs["model_version"]["version"]

    second = run_pipeline(parse_pipeline(spec("champ-b", {"init": {"from": "models:/champ-update@champion",
                                                                    "freeze": ["net.1.*"]}}, 1)), settings)
    assert second.status == "SUCCEEDED", second
    out = second.steps["train"].outputs
    first_epoch = out["model"]["history"][0]
    # the digits split is the same (same seed), so the model that starts from the champion starts at its loss
    assert abs(first_epoch["initial_val_loss"] - champion_val_loss) < 1e-4, (first_epoch, champion_val_loss)
    assert first_epoch["trainable_params"] < first_epoch["total_params"]  # the first layer is frozen
    card = out["model"]["card"]
    assert card["init_from"] == "models:/champ-update@champion"
    assert card["lineage"]["model"] == "champ-update" and card["lineage"]["version"] == version
    tracker = Tracker(settings.tracking_uri, settings.registry_uri)
    run = tracker.get_run(second.steps["train"].mlflow_run_id)
    assert run.tags["aimass.init.version"] == version and run.tags["aimass.init.source"] == "models:/champ-update@champion"
    assert run.metrics["initial_val_loss"] == pytest.approx(champion_val_loss, abs=1e-4)
    new_version = second.steps["register"].outputs["model_version"]["version"]
    mv = next(v for v in tracker.model_versions("champ-update") if v["version"] == new_version)
    assert mv["tags"]["aimass.init.version"] == version  # the registry links the new version to the one it started from
