"""Serving pieces that need no cluster: the config schema, the V2 validation rules, auth, the canary verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from aimass.exceptions import AuthError, InvalidRequestError, ServingError
from aimass.serving.auth import TokenAuth, ensure_token_file, is_loopback, read_tokens
from aimass.serving.canary import CanaryMonitor
from aimass.serving.config import ModelSpec, ServeConfig, parse_model_uri, to_serve_config_v2
from aimass.serving.protocol import (
    PayloadTooLargeError,
    Signature,
    TensorSpec,
    datatype_of,
    encode_outputs,
    parse_request,
    signature_from_mlflow,
    validate_inputs,
)


def cfg(**kw) -> ServeConfig:
    doc = {"models": [{"name": "digits", "modelUri": "models:/digits@champion"}], **kw}
    return ServeConfig.model_validate(doc)


# -- config -------------------------------------------------------------------------------------------
def test_importing_the_config_pulls_in_nothing_heavy():
    code = ("import sys, aimass.serving, aimass.serving.config, aimass.spec.configs.deploy; "
            "print(sorted(m for m in ('ray', 'torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("uri", ["models:/digits/3", "models:/digits@champion", "models:/my.model_v2/12", "models:/a-b@c_1"])
def test_registered_model_uris_are_accepted(uri):
    assert parse_model_uri(uri)[0] == uri.split("/")[1].split("@")[0]


@pytest.mark.parametrize("uri", [
    "models:/../etc/passwd", "models:/digits/../../x", "models:/%2e%2e/1", "models:/..%2f..%2f/1", "models:/digits/0",
    "models:/digits/1/../2", "runs:/abc/model", "file:///etc/passwd", "/etc/passwd", "s3://bucket/model", "models:/digits",
    "models:/digits@", "models:/.hidden/1", "models:/digits\x00/1", "models:/digits/1\n", "models:/dig its/1", "models://digits/1",
])
def test_model_references_outside_the_registry_are_refused(uri):
    with pytest.raises(ValueError, match="model reference must be models:/NAME/VERSION or models:/NAME@ALIAS"):
        parse_model_uri(uri)
    with pytest.raises(ValidationError, match="model reference must be"):
        ModelSpec(name="m", model_uri=uri)


def test_token_values_are_never_accepted_in_the_config():
    for key in ("token", "password", "apiKey"):
        with pytest.raises(ValidationError, match=f"auth.{key}: a token value is never accepted in the serving config"):
            cfg(auth={"mode": "token", key: "s3cr3t-s3cr3t-s3cr3t"})


def test_tracking_uri_with_a_password_is_refused():
    with pytest.raises(ValidationError, match="must not carry a password"):
        cfg(trackingUri="postgresql://mlflow:hunter2@db:5432/mlflow")
    assert cfg(trackingUri="postgresql://mlflow@db:5432/mlflow").tracking_uri.startswith("postgresql://")


@pytest.mark.parametrize("doc,message", [
    ({"models": []}, "no model to serve"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1"}, {"name": "a", "modelUri": "models:/b/1"}]}, "duplicates: a"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1", "deployment": {"replicas": 2, "autoscaling": {}}}]}, "not both"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1", "deployment": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}}]},
     "minReplicas \\(3\\) must be <= maxReplicas \\(2\\)"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1", "replicaz": 2}]}, "Extra inputs are not permitted"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1", "batching": {"maxBatchSize": 0}}]}, "greater than or equal to 1"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1", "canary": {"modelUri": "models:/a/2", "trafficShare": 1.5}}]},
     "less than 1"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1", "canary": {"modelUri": "models:/a/2", "maxErrorRate": float("nan")}}]},
     "finite number"),
    ({"models": [{"name": "../a", "modelUri": "models:/a/1"}]}, "String should match pattern"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1"}], "name": "Not_A_Label"}, "String should match pattern"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1"}], "maxRequestBytes": 10}, "greater than or equal to 1024"),
    ({"models": [{"name": "a", "modelUri": "models:/a/1", "colocate": True, "deployment": {"numGpus": 1}}]},
     "ingress replicas, which have no GPU, but deployment.numGpus is 1; set colocate: false"),
])
def test_invalid_serving_configs_say_what_is_wrong(doc, message):
    with pytest.raises(ValidationError, match=message):
        ServeConfig.model_validate(doc)


def test_to_serve_config_v2_is_a_valid_serve_deploy_schema():
    from ray.serve.schema import ServeDeploySchema

    c = cfg(auth={"tokenFile": "/var/run/secrets/aimass/serve-token"})
    doc = to_serve_config_v2(c, http_port=8000)
    parsed = ServeDeploySchema.model_validate(doc)
    app = parsed.applications[0]
    assert app.import_path == "aimass.serving.app:app_builder"
    assert ServeConfig.model_validate(app.args) == c  # args are the ServeConfig document, verbatim
    assert json.loads(json.dumps(doc)) == doc
    with pytest.raises(ValueError, match="auth.mode none \\(local mode\\) is refused when Serve listens on 0.0.0.0"):
        to_serve_config_v2(cfg(auth={"mode": "none"}))
    assert to_serve_config_v2(cfg(auth={"mode": "none"}), http_host="127.0.0.1")["http_options"]["host"] == "127.0.0.1"


def test_deploy_step_config_builds_the_serving_entry():
    from aimass.spec.configs import get_step_config

    DeployConfig = get_step_config("deploy")
    assert DeployConfig.INPUTS == {"model_uri": False} and DeployConfig.OUTPUTS == ("endpoint",)
    c = DeployConfig.model_validate({"modelName": "digits", "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
                                     "canary": {"trafficShare": 0.2, "maxErrorRate": 0.01}})
    spec = c.model_spec("models:/digits/7")
    assert spec["modelUri"] == "models:/digits@champion"
    assert spec["canary"]["modelUri"] == "models:/digits/7" and spec["canary"]["trafficShare"] == 0.2
    assert spec["deployment"]["autoscaling"]["maxReplicas"] == 3
    full = ServeConfig.model_validate({"models": [spec], **c.app_fields()})
    assert full.models[0].canary.max_error_rate == 0.01
    plain = DeployConfig.model_validate({}).model_spec("models:/digits/7")
    assert plain["name"] == "digits" and plain["modelUri"] == "models:/digits/7" and "canary" not in plain
    with pytest.raises(ValidationError, match="model reference must be"):
        DeployConfig.model_validate({"modelUri": "../../weights.pt"})
    with pytest.raises(ValidationError, match="token value is never accepted"):
        DeployConfig.model_validate({"auth": {"token": "abcdefabcdefabcdef"}})
    co = DeployConfig.model_validate({"colocate": True}).model_spec("models:/digits/7")
    assert co["colocate"] is True and ServeConfig.model_validate({"models": [co]}).models[0].colocate
    with pytest.raises(ValidationError, match="which have no GPU, but numGpus is 1"):
        DeployConfig.model_validate({"colocate": True, "numGpus": 1})


# -- protocol -----------------------------------------------------------------------------------------
SIG = Signature((TensorSpec("input", "FP32", (-1, 4)),), (TensorSpec("probabilities", "FP32", (-1, 3)),), ("a", "b", "c"))


def req(data, shape, datatype="FP32", name="input", **kw):
    return parse_request({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **kw})


def test_valid_inputs_decode_to_the_signature_dtype():
    out = validate_inputs(req(list(range(8)), [2, 4], "INT16"), SIG, max_rows=10)
    assert out["input"].dtype == np.float32 and out["input"].shape == (2, 4)
    nested = validate_inputs(req([[0.5] * 4, [1.5] * 4], [2, 4]), SIG, max_rows=10)["input"]
    assert nested[1, 3] == 1.5


@pytest.mark.parametrize("request_,error,message", [
    (req([0.0] * 4, [1, 4], "FP64"), InvalidRequestError, "datatype FP64 does not match the model's FP32"),
    (req([0] * 4, [1, 4], "INT64"), InvalidRequestError, "datatype INT64 does not match"),
    (req([0.0] * 4, [1, 4], "BYTES"), InvalidRequestError, "datatype BYTES does not match the model's FP32"),
    (req([0.0] * 4, [1, 4], "STRING"), InvalidRequestError, "unknown datatype 'STRING'"),
    (req([0.0] * 5, [1, 5]), InvalidRequestError, "dimension 1 is 5, the model expects 4"),
    (req([0.0] * 4, [4]), InvalidRequestError, "has 1 dimension"),
    (req([], [0, 4]), InvalidRequestError, "empty batch"),
    (req([0.0] * 4, [-1, 4]), InvalidRequestError, "negative dimension"),
    (req([0.0] * 3, [1, 4]), InvalidRequestError, "3 value\\(s\\) given, shape \\[1, 4\\] needs 4"),
    (req([0.0] * 44, [11, 4]), PayloadTooLargeError, "11 rows is over the limit of 10"),
    (req([0.0, float("nan"), 0.0, 0.0], [1, 4]), InvalidRequestError, "contains NaN or Inf \\(first at flat index 1\\)"),
    (req([0.0, 0.0, float("-inf"), 0.0], [1, 4]), InvalidRequestError, "contains NaN or Inf \\(first at flat index 2\\)"),
    (req(["1", "2", "3", "4"], [1, 4]), InvalidRequestError, "non-numeric"),
    (req([None] * 4, [1, 4]), InvalidRequestError, "non-numeric"),
    (req([1] * 4, [1, 4], "UINT64"), InvalidRequestError, "datatype UINT64 does not match"),
    (req([1] * 4, [1, 4], "INT32"), InvalidRequestError, "datatype INT32 does not match"),
    (req([1.5] * 4, [1, 4], "INT16"), InvalidRequestError, "datatype INT16 needs integers"),
    (req([70000] * 4, [1, 4], "INT16"), InvalidRequestError, "out of range for INT16"),
    (req([[0.0] * 4, [0.0] * 3], [2, 4]), InvalidRequestError, "ragged"),
    (req([[0.0] * 4, [[[[[0.0] * 4]]]]], [2, 4]), InvalidRequestError, "ragged \\(rows differ in length\\) or mixes numbers and lists"),
    (req([0.0, [0.0, 0.0], 0.0], [1, 4]), InvalidRequestError, "mixes numbers and lists"),
    (req([[[0.0] * 4]], [1, 4]), InvalidRequestError, "nested more deeply than its shape \\[1, 4\\] has dimensions"),
    (req([0.0] * 4, [1, 4], "BYTES"), InvalidRequestError, "datatype BYTES does not match"),
    (req([0.0] * 4, [1, 4], name="x"), InvalidRequestError, "unknown input 'x'"),
    (req([0.0] * 4, [1, 4], outputs=[{"name": "logits"}]), InvalidRequestError, "unknown output 'logits'"),
])
def test_each_validation_rule_names_the_input_and_the_reason(request_, error, message):
    with pytest.raises(error, match=message):
        validate_inputs(request_, SIG, max_rows=10)


def test_nan_is_accepted_when_the_model_allows_it():
    out = validate_inputs(req([0.0, float("nan"), 0.0, 0.0], [1, 4]), SIG, max_rows=10, allow_non_finite=True)
    assert np.isnan(out["input"][0, 1])


def test_duplicate_and_missing_inputs():
    two = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}
    with pytest.raises(InvalidRequestError, match="input 'input' is given twice"):
        validate_inputs(parse_request({"inputs": [two, two]}), SIG, max_rows=10)
    sig2 = Signature((TensorSpec("input", "FP32", (-1, 4)), TensorSpec("mask", "BOOL", (-1, 4))), SIG.outputs)
    with pytest.raises(InvalidRequestError, match="missing input\\(s\\): mask"):
        validate_inputs(parse_request({"inputs": [two]}), sig2, max_rows=10)


@pytest.mark.parametrize("doc,message", [
    ({"inputs": "x"}, "inputs: Input should be a valid list"),
    ({"inputs": [{"name": "input", "shape": "1x4", "datatype": "FP32", "data": []}]}, "inputs.0.shape"),
    ({"inputs": []}, "inputs: List should have at least 1 item"),
    ({"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}], "id": 3}, "id: Input should be a valid string"),
    ([], "must be a JSON object"),
])
def test_malformed_requests(doc, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_request(doc)


def test_signature_from_the_mlflow_model_file():
    mlmodel = {"signature": {
        "inputs": '[{"name": "input", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 64]}}]',
        "outputs": '[{"name": "probabilities", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]'}}
    sig = signature_from_mlflow(mlmodel, ["0", "1"])
    assert sig.inputs[0] == TensorSpec("input", "FP32", (-1, 64)) and sig.outputs[0].shape == (-1, 10)
    assert Signature.from_dict(sig.to_dict()) == sig
    assert signature_from_mlflow({}) is None
    with pytest.raises(InvalidRequestError, match="only tensor signatures can be served"):
        signature_from_mlflow({"signature": {"inputs": '[{"type": "double", "name": "x"}]', "outputs": '[{"type": "double"}]'}})


def test_outputs_are_encoded_row_major():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    (o,), blobs = encode_outputs({"probabilities": a})
    assert blobs == []
    assert o == {"name": "probabilities", "datatype": "FP32", "shape": [2, 3], "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}
    assert datatype_of(np.int64) == "INT64"
    with pytest.raises(InvalidRequestError, match="has no Open Inference Protocol datatype"):
        datatype_of(np.complex64)


# -- auth -----------------------------------------------------------------------------------------------
def test_token_file_auth_with_rotation(tmp_path, monkeypatch):
    monkeypatch.delenv("AIMASS_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("AIMASS_SERVE_TOKEN_FILE", raising=False)
    f = ensure_token_file(tmp_path / "tok")
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    tok = read_tokens(f)[0]
    a = TokenAuth("token", str(f))
    a.check(f"Bearer {tok}", "10.0.0.1")
    a.check(f"bearer {tok}", None)
    for header, message in [(None, "missing bearer token"), ("Bearer", "must be 'Bearer <token>'"), (f"Basic {tok}", "must be 'Bearer"),
                            ("Bearer " + "z" * 43, "invalid bearer token"), (f"Bearer {tok[:-1]}", "invalid bearer token")]:
        with pytest.raises(AuthError, match=message):
            a.check(header, "127.0.0.1")
    new = "n" * 40
    f.write_text(f"# rotated\n{tok}\n{new}\n")
    os.utime(f, (f.stat().st_atime + 5, f.stat().st_mtime + 5))
    a._checked = 0.0  # skip the 2 s re-read throttle
    a.check(f"Bearer {new}", None)
    a.check(f"Bearer {tok}", None)


def test_token_sources_and_refusals(tmp_path, monkeypatch):
    monkeypatch.delenv("AIMASS_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("AIMASS_SERVE_TOKEN_FILE", raising=False)
    with pytest.raises(ServingError, match="no token is configured"):
        TokenAuth("token")
    monkeypatch.setenv("AIMASS_SERVE_TOKEN", "short")
    with pytest.raises(ServingError, match="at least 16 characters"):
        TokenAuth("token")
    monkeypatch.setenv("AIMASS_SERVE_TOKEN", "e" * 32)
    TokenAuth("token").check("Bearer " + "e" * 32, None)
    (tmp_path / "weak").write_text("abc\n")
    monkeypatch.setenv("AIMASS_SERVE_TOKEN_FILE", str(tmp_path / "weak"))
    with pytest.raises(ServingError, match="at least 16 characters"):
        TokenAuth("token")
    with pytest.raises(ServingError, match="serving token file not found"):
        TokenAuth("token", str(tmp_path / "missing"))


def test_local_mode_answers_loopback_callers_only():
    a = TokenAuth("none")
    for host in ("127.0.0.1", "127.8.9.1", "::1", "localhost"):
        a.check(None, host)
        assert is_loopback(host)
    for host in ("10.1.2.3", "192.168.0.5", "0.0.0.0", "", None, "example.com"):
        with pytest.raises(AuthError, match="answers loopback callers only"):
            a.check("Bearer whatever-whatever", host)


# -- canary ---------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_canary_waits_for_min_requests_then_trips_on_error_rate():
    clock = Clock()
    m = CanaryMonitor(max_error_rate=0.1, max_p99_latency_ms=None, window_s=10, min_requests=10, clock=clock)
    for _ in range(4):
        assert not m.record(False, 0.001).breached  # 4 failures, but fewer than minRequests
    for _ in range(5):
        assert not m.record(True, 0.001).breached
    v = m.record(True, 0.001)
    assert v.breached and v.requests == 10 and v.error_rate == pytest.approx(0.4)
    assert v.reason == "error rate 0.400 > maxErrorRate 0.1 over 10 requests"
    assert m.record(True, 0.001).breached  # sticky


def test_canary_trips_on_p99_and_forgets_old_samples():
    clock = Clock()
    m = CanaryMonitor(max_error_rate=1.0, max_p99_latency_ms=50, window_s=10, min_requests=5, clock=clock)
    for _ in range(5):
        m.record(True, 0.2)  # 200 ms
    clock.t = 100.0  # the slow requests leave the window
    for _ in range(5):
        v = m.record(True, 0.01)
    assert m.tripped is not None and "p99 latency 200.0 ms > maxP99LatencyMs 50" in m.tripped.reason
    fresh = CanaryMonitor(max_error_rate=1.0, max_p99_latency_ms=50, window_s=10, min_requests=5, clock=clock)
    for _ in range(5):
        v = fresh.record(True, 0.01)
    assert not v.breached and v.reason == "healthy" and v.p99_ms == pytest.approx(10.0)
    clock.t = 1000.0
    assert fresh.verdict().requests == 0


# -- the ingress's canary accounting (no cluster: the model calls are replaced) --------------------------
def _canary_ingress(monkeypatch, challenger_error: Exception | None):
    import numpy as np

    from aimass.serving import ingress as ing
    from aimass.serving.metrics import ServingMetrics
    from aimass.serving.protocol import Signature

    class Bare(ing.Ingress):
        def __del__(self):  # the ASGI wrapper's own finaliser expects a running replica
            pass

    obj = object.__new__(Bare)  # the replica's state, without a Serve replica context
    obj.app_name, obj.metrics, obj.cfg = "t", ServingMetrics(), None
    obj._tripped, obj._bg, obj._signatures = {}, set(), {}
    champion, challenger = ing.Target("1", "d--1", "d"), ing.Target("2", "d--2", "d")
    monitor = CanaryMonitor(max_error_rate=0.2, max_p99_latency_ms=None, window_s=60, min_requests=3)
    obj.routes = {"d": ing.Route("d", champion, challenger, share=1.0, monitor=monitor, versions=["1", "2"])}
    calls: list[str] = []

    async def predict(route, t, x):
        calls.append(t.version)
        if t is challenger and challenger_error is not None:
            raise challenger_error
        return np.full((x.shape[0], 2), 0.5, dtype=np.float32), {}

    sig = Signature.from_dict({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
                               "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]})

    async def signature(t):
        return sig

    reported: list[dict] = []

    async def report(info):
        reported.append(info)

    monkeypatch.setattr(obj, "_predict", predict, raising=False)
    monkeypatch.setattr(obj, "signature", signature, raising=False)
    monkeypatch.setattr(obj, "_report_rollback", report, raising=False)
    return obj, monitor, calls, reported


BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0.2]}]}).encode()


@pytest.mark.parametrize("error, falls_back", [
    ("timeout", False),   # a hung challenger: 504 to the client, counted against the challenger
    ("overload", True),   # the challenger's own queue is full: counted, answered by the champion
    ("broken", True),
])
def test_every_challenger_failure_counts_and_trips_the_canary(monkeypatch, error, falls_back):
    import asyncio

    from aimass.serving import ingress as ing

    exc = {"timeout": ing.TimeoutServingError("model d v2 did not answer within 30s"),
           "overload": ing.OverloadedError("model d v2 is at capacity"), "broken": RuntimeError("boom")}[error]
    obj, monitor, calls, reported = _canary_ingress(monkeypatch, exc)

    async def go():
        outcomes = []
        for _ in range(3):
            try:
                status, body, _ = await obj.infer("d", None, BODY)
                outcomes.append(body["model_version"])
            except ing.TimeoutServingError:
                outcomes.append("504")
        await asyncio.sleep(0)  # let the rollback report run
        return outcomes

    outcomes = asyncio.run(go())
    assert outcomes == (["1"] * 3 if falls_back else ["504"] * 3)
    assert monitor.tripped is not None and obj.routes["d"].share == 0.0  # traffic is off the challenger
    assert len(reported) == 1 and reported[0]["version"] == "2"


def test_requests_pinned_to_the_challenger_count_too(monkeypatch):
    import asyncio

    obj, monitor, calls, reported = _canary_ingress(monkeypatch, RuntimeError("boom"))

    async def go():
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await obj.infer("d", "2", BODY)  # an explicit version: no fallback, but it is judged
        await asyncio.sleep(0)

    asyncio.run(go())
    assert calls == ["2", "2", "2"] and monitor.tripped is not None and len(reported) == 1
