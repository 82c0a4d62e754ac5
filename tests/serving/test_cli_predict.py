"""``aimass predict`` against a real served model (the serving package's cluster): what a person sees per row,
and one line naming the model's signature for each kind of bad input, never a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.ray

N_IN = 6
NAMES = ["setosa", "versicolor", "virginica", "unknown-class-with-a-long-name"]


@pytest.fixture(scope="module")
def served(serving_cluster, registry, token):
    from aimass.serving.config import DeploymentSpec, IngressSpec, ModelSpec, ServeConfig
    from aimass.serving.deploy import deploy, shutdown
    from aimass.settings import Settings

    registry.register("flowers", [N_IN], len(NAMES), alias="champion", class_names=NAMES)
    cfg = ServeConfig(name="cli", route_prefix="/cli",
                      models=[ModelSpec(name="flowers", model_uri="models:/flowers@champion",
                                        deployment=DeploymentSpec(num_cpus=0.1))],
                      ingress=IngressSpec(num_cpus=0.1), auth={"tokenFile": str(serving_cluster.home / "serve-token")})
    deploy(cfg, Settings.load())
    yield f"{serving_cluster.url}/cli"
    shutdown("cli")


def predict(served, serving_cluster, *args: str):
    from aimass.cli.main import app as cli

    res = CliRunner().invoke(cli, ["predict", *args, "--url", served, "--token-file", str(serving_cluster.home / "serve-token")])
    assert "Traceback" not in res.output, res.output
    return res


def one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def test_each_row_shows_its_class_by_name_its_probability_and_the_top_3(served, serving_cluster, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    rows = json.dumps(np.random.default_rng(0).normal(size=(3, N_IN)).tolist())
    res = predict(served, serving_cluster, "flowers", "--input", rows)
    assert res.exit_code == 0, res.output
    out = res.output
    assert "top 3" in out and "…" not in out and all(len(ln) <= 80 for ln in out.splitlines())
    assert any(n in out for n in NAMES[:3])
    doc = json.loads(predict(served, serving_cluster, "flowers", "--input", rows, "--output", "json").output)
    for p in doc["predictions"]:
        assert p["class"] in NAMES and len(p["top"]) == 3 and p["top"][0]["class"] == p["class"]
        assert set(p["probabilities"]) == set(NAMES) and abs(sum(p["probabilities"].values()) - 1) < 1e-4
    res = predict(served, serving_cluster, "flowers", "--input", rows, "--all")
    assert res.exit_code == 0 and "all classes" in res.output and "unknown-class-with-a-long-name" in res.output


@pytest.mark.parametrize("rows, given", [
    ([[1.0, 2.0]], "given 1 row of 2 values (shape [1, 2])"),
    ([[0.0] * (N_IN + 1)] * 2, f"given 2 rows of {N_IN + 1} values"),
    ([1.0, 2.0, 3.0], "given one row of 3 values"),
])
def test_a_wrong_number_of_features_names_the_signature(served, serving_cluster, rows, given):
    res = predict(served, serving_cluster, "flowers", "--input", json.dumps(rows))
    assert res.exit_code == 1
    line = one_line(res)
    assert f"'flowers' expects input 'input' FP32 [-1, {N_IN}] (rows of {N_IN} values)" in line and given in line


def test_a_model_that_is_not_served_is_one_line(served, serving_cluster):
    res = predict(served, serving_cluster, "digits", "--input", "[[1, 2]]")
    assert res.exit_code == 1
    line = one_line(res)
    assert f"model 'digits' is not served at {served}" in line and "aimass serving status" in line


def test_a_json_object_that_is_not_rows_names_the_signature(served, serving_cluster):
    res = predict(served, serving_cluster, "flowers", "--input", '{"rows": [[1, 2]]}')
    assert res.exit_code == 1
    assert f"'flowers' expects input 'input' FP32 [-1, {N_IN}]" in one_line(res) and "given a JSON dict" in one_line(res)


def test_a_v2_body_with_a_wrong_shape_is_answered_by_the_server_in_one_line(served, serving_cluster):
    body = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    res = predict(served, serving_cluster, "flowers", "--input", json.dumps(body))
    assert res.exit_code == 1
    assert f"the model expects {N_IN}" in one_line(res)
