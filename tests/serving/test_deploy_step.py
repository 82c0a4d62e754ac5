"""The ``deploy`` pipeline step, run as the orchestrator runs it: inside a Ray task on the cluster."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ray


def test_deploy_step_serves_the_registered_model_and_returns_the_endpoint(serving_cluster, registry, token):
    import ray

    from aimass.client import Client
    from aimass.serving.deploy import shutdown
    from aimass.spec.configs import get_step_config
    from aimass.steps import StepContext, get_step

    version = registry.register("ds", [5], 4, alias="champion")
    run = registry.tracker.start_run(registry.exp, "deploy-step")
    ctx = StepContext(run_id="r1", pipeline="p", step_name="deploy", step_type="deploy", inputs={"model_uri": f"models:/ds/{version}"},
                      artifact_root=str(serving_cluster.home / "artifacts"), prefix="runs/r1/steps/deploy",
                      tracking_uri=serving_cluster.tracking_uri, registry_uri=None, experiment_id=registry.exp,
                      mlflow_run_id=run, seed=0, work_dir=str(serving_cluster.home / "work"))
    config = get_step_config("deploy").model_validate({"appName": "step", "routePrefix": "/step", "numCpus": 0.1,
                                                        "batching": {"maxBatchSize": 8}})
    step = get_step("deploy")
    assert step.ray_options(config, {})["num_cpus"] == 0

    @ray.remote(num_cpus=0)
    def run_step(ctx, config):
        return step.run(ctx, config)

    try:
        out = ray.get(run_step.remote(ctx, config), timeout=300)
        ep = out["endpoint"]
        assert ep == {"url": f"{serving_cluster.url}/step", "infer_url": f"{serving_cluster.url}/step/v2/models/ds/infer",
                      "app": "step", "model": "ds", "registered": "ds", "version": version, "challenger": None}
        res = Client(ep["url"], token=token).infer(ep["model"], np.zeros((2, 5)))
        assert res.model_version == version and res["probabilities"].shape == (2, 4)
        assert registry.tracker.get_run(run).tags["aimass.endpoint"] == ep["url"]

        # without a model the step fails with a clear error
        empty = StepContext(**{**ctx.__getstate__(), "inputs": {}})
        with pytest.raises(Exception, match="the deploy step has no model to serve"):
            ray.get(run_step.remote(empty, config), timeout=60)
    finally:
        shutdown("step")


def test_cli_serve_with_a_config_file_then_adds_a_model(serving_cluster, registry, token, tmp_path):
    import json

    from typer.testing import CliRunner

    from aimass.cli.main import app as cli

    registry.register("cli-a", [3], 2, alias="champion")
    registry.register("cli-b", [4], 5, alias="champion")
    cfg = tmp_path / "serving.yaml"
    cfg.write_text(f"""\
name: cli
routePrefix: /cli
auth: {{tokenFile: {serving_cluster.home / 'serve-token'}}}
ingress: {{numCpus: 0.1}}
models:
  - name: a
    modelUri: models:/cli-a@champion
    deployment: {{numCpus: 0.1}}
""")
    runner = CliRunner()
    try:
        res = runner.invoke(cli, ["serve", "--config", str(cfg), "--output", "json"])
        assert res.exit_code == 0, res.output
        st = json.loads(res.output)
        assert st["name"] == "cli" and st["url"] == f"{serving_cluster.url}/cli" and [m["name"] for m in st["models"]] == ["a"]
        # a second model joins the same application; the first keeps serving
        res = runner.invoke(cli, ["serve", "models:/cli-b@champion", "--app", "cli", "--name", "b", "--replicas", "1",
                                  "--max-replicas", "3", "--max-batch-size", "8", "--output", "json"])
        assert res.exit_code == 0, res.output
        st = json.loads(res.output)
        assert {m["name"]: m["version"] for m in st["models"]} == {"a": "1", "b": "1"}
        # the autoscaling bounds reached Serve's autoscaler
        from ray.serve.context import _get_global_client

        from aimass.serving.controller import model_deployment

        details = _get_global_client().get_serve_details()["applications"]["cli"]["deployments"]
        b = details[model_deployment("b", "cli-b", "1")]["deployment_config"]
        auto = b["autoscaling_config"]
        assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 3, 2.0)
        assert b["max_queued_requests"] == 256
        for name, width, classes in (("a", 3, 2), ("b", 4, 5)):
            res = runner.invoke(cli, ["predict", name, "--input", json.dumps([[0.5] * width]), "--url", f"{serving_cluster.url}/cli",
                                      "--output", "json"])
            assert res.exit_code == 0, res.output
            assert len(json.loads(res.output)["predictions"][0]["probabilities"]) == classes
    finally:
        res = runner.invoke(cli, ["serving", "shutdown", "cli", "--output", "json"])
    assert res.exit_code == 0 and json.loads(res.output) == {"name": "cli", "removed": True}


def test_cli_serve_reports_config_errors_with_their_line(tmp_path):
    from typer.testing import CliRunner

    from aimass.cli.main import app as cli

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: cli\nmodels:\n  - name: a\n    modelUri: models:/a@champion\n    replicaz: 2\n")
    res = CliRunner().invoke(cli, ["serve", "--config", str(cfg)])
    assert res.exit_code == 1
    assert f"{cfg}:5" in res.output and "replicaz: Extra inputs are not permitted" in res.output
    cfg.write_text("models:\n  - name: a\n    modelUri: ../weights.pt\n")
    res = CliRunner().invoke(cli, ["serve", "--config", str(cfg)])
    assert res.exit_code == 1 and "model reference must be models:/NAME/VERSION" in res.output
    res = CliRunner().invoke(cli, ["serve"])
    assert res.exit_code == 1 and "nothing to serve" in res.output
