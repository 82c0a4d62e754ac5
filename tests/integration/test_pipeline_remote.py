"""The same pipeline against the deployed kind of backends: MLflow server on PostgreSQL, artifacts and
Ray Train checkpoints on a real S3 endpoint (moto server on loopback), on the local Ray cluster."""

from __future__ import annotations

import boto3
import pytest

from aimass.orchestrator import run_pipeline
from aimass.settings import Settings
from aimass.spec import parse_pipeline
from aimass.storage import get_store
from aimass.tracking import Tracker
from tests.mlflow_server import mlflow_on_postgres
from tests.s3util import moto_s3

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.slow]

SPEC = {
    "apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": "remote-backends"},
    "spec": {"seed": 3, "steps": [
        {"name": "data", "type": "data", "config": {"source": "builtin:iris"}},
        {"name": "train", "type": "train", "dependsOn": ["data"],
         "config": {"model": "mlp", "numWorkers": 2, "epochs": 3, "batchSize": 16, "optimizer": {"lr": 0.01}}},
        {"name": "evaluate", "type": "evaluate", "dependsOn": ["data", "train"]},
        {"name": "register", "type": "register", "dependsOn": ["train", "evaluate"],
         "config": {"modelName": "iris-remote", "gate": {"thresholds": [{"metric": "accuracy", "min": 0.0}]}}},
    ]},
}


@pytest.fixture(scope="module")
def backends(tmp_path_factory, request):
    # exactly these variables are set for the module and restored after it (never the whole environment)
    with pytest.MonkeyPatch.context() as mp, moto_s3() as s3_url, \
            mlflow_on_postgres(tmp_path_factory.mktemp("mlflow-remote")) as mlflow_srv:
        for k, v in dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                         AIMASS_S3_ENDPOINT_URL=s3_url).items():
            mp.setenv(k, v)
        boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket="aimass-artifacts")
        # connect only now, so the Ray job's workers inherit the S3 settings above
        ray = request.getfixturevalue("local_ray")
        try:
            yield {"s3": s3_url, "mlflow": mlflow_srv.url}
        finally:
            ray.shutdown()


def test_pipeline_on_mlflow_server_and_s3(backends):
    settings = Settings.load(tracking_uri=backends["mlflow"], artifact_root="s3://aimass-artifacts/pipelines",
                             s3_endpoint_url=backends["s3"], mlflow_artifact_location=None)
    state = run_pipeline(parse_pipeline(SPEC), settings, run_id="remote-1")
    assert state.status == "SUCCEEDED", state.error
    store = get_store(settings.artifact_root, endpoint_url=backends["s3"])
    keys = store.list("runs/remote-1")
    assert "runs/remote-1/state.json" in keys
    assert any(k.startswith("runs/remote-1/steps/train/ray/train/checkpoint_") for k in keys), "no checkpoint in S3"
    assert "runs/remote-1/steps/train/model/weights.safetensors" in keys
    tr = Tracker(backends["mlflow"])
    assert tr.version_by_alias("iris-remote", "champion")["version"] == "1"
    d = tr.download_model_dir("models:/iris-remote@champion")
    assert (d / "weights.safetensors").is_file() and not list(d.rglob("*.pkl"))
    again = run_pipeline(parse_pipeline(SPEC), settings, run_id="remote-2")
    assert [s.cached for s in again.steps.values()] == [True, True, True, True]
