"""The V2 protocol end to end on a real local Ray Serve over real HTTP: endpoints, every validation
error, auth, the SDK client, the CLI, metrics and overload behaviour."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.serving._support import http_client, wait_until

pytestmark = pytest.mark.ray

N_IN, N_CLASSES = 8, 3


@pytest.fixture(scope="module")
def app(serving_cluster, registry, token):
    from aimass.serving.config import BatchingSpec, DeploymentSpec, IngressSpec, ModelSpec, ServeConfig
    from aimass.serving.deploy import deploy, shutdown
    from aimass.settings import Settings

    registry.register("digits", [N_IN], N_CLASSES, alias="champion", class_names=["zero", "one", "two"])
    cfg = ServeConfig(
        name="e2e",
        models=[ModelSpec(name="digits", model_uri="models:/digits@champion", max_rows_per_request=64,
                          deployment=DeploymentSpec(num_cpus=0.1, max_ongoing_requests=8, max_queued_requests=4),
                          batching=BatchingSpec(max_batch_size=16, batch_wait_timeout_s=0.05))],
        ingress=IngressSpec(num_cpus=0.1),
        max_request_bytes=64 * 1024,
        auth={"tokenFile": str(serving_cluster.home / "serve-token")},
    )
    st = deploy(cfg, Settings.load())
    yield st
    shutdown("e2e")


@pytest.fixture()
def http(serving_cluster, token, app):
    with http_client(serving_cluster, token) as c:
        yield c


def body(x, name="input", datatype="FP32", **extra):
    x = np.asarray(x)
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}], **extra}


def test_deploy_reports_url_and_version(app, serving_cluster):
    assert app["status"] == "RUNNING"
    assert app["url"] == serving_cluster.url
    assert app["models"] == [{"name": "digits", "registered": "digits", "version": "1", "challenger": None,
                              "canary_share": None, "kind": "dedicated"}]
    assert app["deployments"]["digits--1"]["status"] == "HEALTHY"


def test_the_direct_endpoint_answers_like_the_proxy_with_the_same_auth(app, serving_cluster, token):
    """Throughput mode: the ingress replica answers on a port of its own, one hop less than the proxy,
    with the same routes, auth and answers (and listening on loopback only, like the proxy)."""
    import httpx

    from aimass.serving.deploy import status

    # Serve publishes the port once the replica is up
    urls = app["direct_urls"] or wait_until(lambda: status("e2e")["apps"][0]["direct_urls"], 30, "the direct URL")
    assert len(urls) == 1 and urls[0].startswith("http://127.0.0.1:") and urls[0] != serving_cluster.url, urls
    x = np.random.default_rng(1).normal(size=(3, N_IN)).astype(np.float32)
    answers = []
    for base in (urls[0], serving_cluster.url):
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.post("/v2/models/digits/infer", json=body(x)).status_code == 401
            r = c.post("/v2/models/digits/infer", json=body(x), headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            answers.append(r.json()["outputs"][0]["data"])
    assert np.allclose(answers[0], answers[1])


def test_health_and_server_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "aimass" and "version" in meta and meta["extensions"] == ["binary_tensor_data"]
    assert all(u.startswith("http://127.0.0.1:") for u in meta["endpoints"])  # the ingress replicas' direct URLs
    r = http.get("/v2/models/digits/ready")
    assert r.status_code == 200 and r.json() == {"name": "digits", "ready": True}
    assert http.get("/v2/models/digits/versions/1/ready").status_code == 200


def test_model_metadata_comes_from_the_mlflow_signature(http):
    meta = http.get("/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, N_IN]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, N_CLASSES]}]
    assert meta["parameters"]["class_names"] == ["zero", "one", "two"]
    assert http.get("/v2/models/digits/versions/1").json()["versions"] == ["1"]


def test_infer_returns_named_tensors_matching_the_local_model(http, registry):
    from aimass.models.io import load_model

    x = np.random.default_rng(0).normal(size=(5, N_IN)).astype(np.float32)
    r = http.post("/v2/models/digits/infer", json=body(x, id="req-1"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "digits" and doc["model_version"] == "1" and doc["id"] == "req-1"
    (out,) = doc["outputs"]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [5, N_CLASSES]
    probs = np.asarray(out["data"], dtype=np.float32).reshape(5, N_CLASSES)
    local = load_model(registry.tracker.download_model_dir("models:/digits/1"))
    import torch

    np.testing.assert_allclose(probs, local.predict_proba(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    # nested data, an explicit version and an outputs filter are all part of the protocol
    nested = {"inputs": [{"name": "input", "shape": [5, N_IN], "datatype": "FP32", "data": x.tolist()}],
              "outputs": [{"name": "probabilities"}]}
    r2 = http.post("/v2/models/digits/versions/1/infer", json=nested)
    assert r2.status_code == 200
    np.testing.assert_allclose(np.asarray(r2.json()["outputs"][0]["data"]), out["data"], rtol=1e-6)


def test_safe_integer_inputs_are_accepted(http):
    r = http.post("/v2/models/digits/infer", json=body(np.ones((2, N_IN), dtype=np.int16), datatype="INT16"))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [2, N_CLASSES]


BAD = [
    ("wrong datatype", body(np.ones((1, N_IN)), datatype="FP64"), 400, "datatype FP64 does not match the model's FP32"),
    ("unknown datatype", body(np.ones((1, N_IN)), datatype="FLOAT"), 400, "unknown datatype 'FLOAT'"),
    ("wrong width", body(np.ones((2, N_IN + 1))), 400, "dimension 1 is 9, the model expects 8"),
    ("wrong rank", body(np.ones((2, 2, N_IN))), 400, "has 3 dimension"),
    ("empty batch", {"inputs": [{"name": "input", "shape": [0, N_IN], "datatype": "FP32", "data": []}]}, 400, "empty batch"),
    ("count mismatch", {"inputs": [{"name": "input", "shape": [2, N_IN], "datatype": "FP32", "data": [0.0] * N_IN}]}, 400,
     "8 value\\(s\\) given, shape \\[2, 8\\] needs 16"),
    ("unknown input", body(np.ones((1, N_IN)), name="pixels"), 400, "unknown input 'pixels'"),
    ("strings", {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]}, 400, "dimension 1 is 2"),
    ("string data", {"inputs": [{"name": "input", "shape": [1, N_IN], "datatype": "FP32", "data": ["x"] * N_IN}]}, 400,
     "non-numeric"),
    ("ragged", {"inputs": [{"name": "input", "shape": [2, N_IN], "datatype": "FP32", "data": [[0.0] * N_IN, [0.0] * 3]}]}, 400,
     "ragged"),
    ("no inputs", {"inputs": []}, 400, "inputs"),
    ("not an object", [1, 2, 3], 400, "must be a JSON object"),
    ("unknown field", {**body(np.ones((1, N_IN))), "model": "x"}, 400, "model: Extra inputs are not permitted"),
    ("unknown output", body(np.ones((1, N_IN)), outputs=[{"name": "logits"}]), 400, "unknown output 'logits'"),
    ("too many rows", body(np.ones((65, N_IN))), 413, "65 rows is over the limit of 64"),
    ("binary size and data", {"inputs": [{"name": "input", "shape": [1, N_IN], "datatype": "FP32", "data": [],
                                          "parameters": {"binary_data_size": 32}}]}, 400, "both 'data' and parameters.binary_data_size"),
    ("binary without its header", {"inputs": [{"name": "input", "shape": [1, N_IN], "datatype": "FP32",
                                               "parameters": {"binary_data_size": 32}}]}, 400, "no Inference-Header-Content-Length"),
    ("mixed numbers and lists", {"inputs": [{"name": "input", "shape": [1, N_IN], "datatype": "FP32",
                                             "data": [1.0, [2.0]] + [0.0] * (N_IN - 2)}]}, 400, "mixes numbers and lists"),
    ("other model_name", {**body(np.ones((1, N_IN))), "model_name": "other"}, 400, "names model 'other'"),
]


@pytest.mark.parametrize("what,payload,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_refused_with_a_message(http, what, payload, status, message):
    r = http.post("/v2/models/digits/infer", json=payload)
    assert r.status_code == status, r.text
    err = r.json()
    import re

    assert re.search(message, err["error"]), err
    assert err["code"] in ("invalid_request", "payload_too_large")


@pytest.mark.parametrize("token_literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_refused(http, token_literal):
    data = ", ".join(["0.5"] * (N_IN - 1) + [token_literal])
    raw = '{"inputs": [{"name": "input", "shape": [1, %d], "datatype": "FP32", "data": [%s]}]}' % (N_IN, data)  # noqa: UP031 - JSON braces
    r = http.post("/v2/models/digits/infer", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "contains NaN or Inf (first at flat index 7)" in r.json()["error"]


def test_malformed_json_is_a_400(http):
    r = http.post("/v2/models/digits/infer", content=b'{"inputs": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_unknown_model_and_version_are_404(http):
    r = http.post("/v2/models/nope/infer", json=body(np.ones((1, N_IN))))
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"]
    r = http.post("/v2/models/digits/versions/7/infer", json=body(np.ones((1, N_IN))))
    assert r.status_code == 404 and "no served version '7'" in r.json()["error"]
    assert http.get("/v2/models/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert http.get("/v2/models/digits/versions/..%2F1").status_code == 404


def test_oversized_bodies_get_413_before_parsing(http):
    big = b'{"inputs": [' + b" " * (70 * 1024) + b"]}"
    r = http.post("/v2/models/digits/infer", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit of 65536" in r.json()["error"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(80):
            yield b" " * 1024

    r = http.post("/v2/models/digits/infer", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]
    # and the replica is still healthy
    assert http.post("/v2/models/digits/infer", json=body(np.ones((1, N_IN)))).status_code == 200


ENDPOINTS = [("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2"), ("GET", "/v2/models/digits"),
             ("GET", "/v2/models/digits/ready"), ("POST", "/v2/models/digits/infer"), ("GET", "/metrics"),
             ("GET", "/openapi.json"), ("GET", "/docs")]


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_every_endpoint_needs_the_token(serving_cluster, app, method, path):
    payload = json.dumps(body(np.ones((1, N_IN)))) if method == "POST" else None
    with http_client(serving_cluster, None) as anon:
        r = anon.request(method, path, content=payload)
        assert r.status_code == 401 and r.json()["error"] == "missing bearer token"
        assert r.headers["www-authenticate"].startswith("Bearer")
    with http_client(serving_cluster, "x" * 43) as wrong:
        r = wrong.request(method, path, content=payload)
        assert r.status_code == 401 and r.json()["error"] == "invalid bearer token"
    with http_client(serving_cluster, None, headers={"Authorization": "Basic dXNlcjpwYXNz"}) as basic:
        assert basic.request(method, path, content=payload).status_code == 401


def test_auth_is_checked_before_the_body_is_read(serving_cluster, app):
    with http_client(serving_cluster, None) as anon:
        r = anon.post("/v2/models/digits/infer", content=b"x" * (1024 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 401


def test_openapi_document_describes_the_protocol(http):
    doc = http.get("/openapi.json").json()
    paths = doc["paths"]
    for p in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}", "/v2/models/{name}/ready",
              "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        assert p in paths, p
    req = paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert req == "#/components/schemas/InferenceRequest"
    assert "RequestInput" in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_sdk_client(serving_cluster, token, app):
    from aimass import client as client_mod
    from aimass.exceptions import AuthError, InvalidRequestError, NotFoundError

    c = client_mod.Client(serving_cluster.url, token=token)
    assert c.ready() and c.ready("digits") and c.live()
    assert c.metadata()["name"] == "aimass"
    assert c.metadata("digits")["inputs"][0]["shape"] == [-1, N_IN]
    x = np.random.default_rng(1).normal(size=(3, N_IN))  # float64: the client casts to the model's FP32
    res = c.infer("digits", x, request_id="abc")
    assert res.model_version == "1" and res.id == "abc" and res.class_names == ["zero", "one", "two"]
    p = res["probabilities"]
    assert p.shape == (3, N_CLASSES) and p.dtype == np.float32 and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert c.infer("digits", x[0]).outputs["probabilities"].shape == (1, N_CLASSES)  # one row
    with pytest.raises(InvalidRequestError, match="dimension 1 is 4, the model expects 8"):
        c.infer("digits", np.ones((1, 4)))
    with pytest.raises(NotFoundError, match="no model named 'other'"):
        c.infer("other", x)
    with pytest.raises(AuthError, match="invalid bearer token"):
        client_mod.Client(serving_cluster.url, token="y" * 40).metadata("digits")
    # the token file is found through the environment, as replicas and CLIs do
    import os

    os.environ["AIMASS_SERVE_TOKEN_FILE"] = str(serving_cluster.home / "serve-token")
    try:
        assert client_mod.Client(serving_cluster.url).infer("digits", x).model_version == "1"
    finally:
        os.environ.pop("AIMASS_SERVE_TOKEN_FILE")


def test_cli_predict_and_status(serving_cluster, app):
    from typer.testing import CliRunner

    from aimass.cli.main import app as cli

    runner = CliRunner()
    rows = json.dumps(np.eye(2, N_IN).tolist())
    res = runner.invoke(cli, ["predict", "digits", "--input", rows, "--url", serving_cluster.url, "--token-file",
                              str(serving_cluster.home / "serve-token"), "--output", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["model_version"] == "1" and len(doc["predictions"]) == 2
    assert doc["predictions"][0]["class"] in ("zero", "one", "two")
    assert math.isclose(sum(doc["predictions"][0]["probabilities"].values()), 1.0, abs_tol=1e-4)
    res = runner.invoke(cli, ["predict", "digits", "--input", rows, "--url", serving_cluster.url, "--token-file",
                              str(serving_cluster.home / "serve-token")])
    assert res.exit_code == 0 and "predicted" in res.output and "zero" in res.output
    res = runner.invoke(cli, ["predict", "digits", "--input", "[[1, 2]]", "--url", serving_cluster.url, "--token-file",
                              str(serving_cluster.home / "serve-token")])
    assert res.exit_code == 1 and "expects input 'input' FP32 [-1, 8] (rows of 8 values); given 1 row of 2 values" in res.output
    res = runner.invoke(cli, ["serving", "status", "e2e", "--output", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["apps"][0]["models"][0]["version"] == "1"


def test_metrics_per_model_and_version(http):
    for _ in range(3):
        assert http.post("/v2/models/digits/infer", json=body(np.ones((2, N_IN)))).status_code == 200
    http.post("/v2/models/digits/infer", json=body(np.ones((0, N_IN))))
    text = http.get("/metrics").text
    assert 'aimass_serve_requests_total{code="200",model="digits",version="1"}' in text
    assert 'aimass_serve_errors_total{kind="client",model="digits",version="-"}' in text
    assert 'aimass_serve_request_latency_seconds_bucket{le="+Inf",model="digits",version="1"}' in text
    assert 'aimass_serve_batch_size_count{model="digits",version="1"}' in text
    assert 'aimass_serve_queue_length{model="digits",version="1"} 0.0' in text


def test_flood_is_refused_fast_and_the_replica_stays_healthy(serving_cluster, token, http):
    """max_ongoing 8 + a queue of 4 per caller, 50 ms batch window: a burst gets 503s at once, never a timeout."""
    x = body(np.ones((1, N_IN)))

    def one(_):
        with http_client(serving_cluster, token, timeout=10.0) as c:
            t = time.perf_counter()
            r = c.post("/v2/models/digits/infer", json=x)
            return r.status_code, time.perf_counter() - t, r.headers.get("retry-after")

    with ThreadPoolExecutor(48) as ex:
        results = list(ex.map(one, range(96)))
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) > 0
    assert all(ra == "1" for c, _, ra in results if c == 503)
    assert max(t for c, t, _ in results if c == 503) < 5.0
    assert http.post("/v2/models/digits/infer", json=x).status_code == 200
    assert http.get("/v2/health/ready").status_code == 200


def test_a_standard_v2_client_works_unchanged(serving_cluster, token, app):
    """Triton's HTTP client (a stock Open Inference Protocol client) against our endpoint."""
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency")
    auth = {"Authorization": f"Bearer {token}"}
    c = httpclient.InferenceServerClient(url=serving_cluster.url.split("//")[1])
    assert c.is_server_live(headers=auth) and c.is_server_ready(headers=auth)
    assert c.is_model_ready("digits", headers=auth)
    meta = c.get_model_metadata("digits", headers=auth)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, N_IN]}]
    x = np.random.default_rng(3).normal(size=(4, N_IN)).astype(np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=False)
    res = c.infer("digits", [inp], outputs=[out], request_id="t1", headers=auth)
    probs = res.as_numpy("probabilities")
    assert probs.shape == (4, N_CLASSES) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert res.get_response()["model_version"] == "1" and res.get_response()["id"] == "t1"
    from tritonclient.utils import InferenceServerException

    bad = httpclient.InferInput("input", [1, N_IN + 1], "FP32")
    bad.set_data_from_numpy(np.ones((1, N_IN + 1), dtype=np.float32), binary_data=False)
    with pytest.raises(InferenceServerException, match="dimension 1 is 9, the model expects 8"):
        c.infer("digits", [bad], headers=auth)
    with pytest.raises(InferenceServerException, match="missing bearer token"):
        c.get_model_metadata("digits")
    # binary tensor data extension, both ways (a fresh headers dict each call: the client writes into it)
    inp.set_data_from_numpy(x, binary_data=True)
    res = c.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=True)],
                  headers=dict(auth))
    assert np.allclose(res.as_numpy("probabilities"), probs, atol=1e-6)
