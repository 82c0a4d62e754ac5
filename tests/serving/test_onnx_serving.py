"""An exported ONNX model, registered and served on ONNX Runtime, answers a stock V2 client (Triton's)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.ray


def test_a_served_onnx_model_answers_tritons_http_client(serving_cluster, registry, token):
    import torch
    import tritonclient.http as httpclient

    from aimass.compress import export_onnx
    from aimass.models.io import CARD_FILE, load_model
    from aimass.models.registry import ModelCard, build_model
    from aimass.serving.config import DeploymentSpec, IngressSpec, ModelSpec, ServeConfig
    from aimass.serving.deploy import deploy, shutdown
    from aimass.settings import Settings

    torch.manual_seed(1)
    card = ModelCard(name="mlp", input_shape=[6], num_classes=3, args={"hidden": [16], "dropout": 0.0}, class_names=["a", "b", "c"])
    model = build_model(card).eval()
    d = serving_cluster.home / "models" / "onnx-1"
    export_onnx(model, d, [6])
    (d / CARD_FILE).write_text(json.dumps(card.to_dict() | {"runtime": "onnxruntime"}))
    assert type(load_model(d)).__name__ == "OnnxModel"
    tracker = registry.tracker
    run = tracker.start_run(registry.exp, "onnx-1")
    uri = tracker.log_model(run, d, [6], 3)
    tracker.end_run(run)
    version = tracker.register(uri, "onnxdigits", run_id=run)

    cfg = ServeConfig(name="onnx", route_prefix="/onnx",
                      models=[ModelSpec(name="onnxdigits", model_uri=f"models:/onnxdigits/{version}",
                                        deployment=DeploymentSpec(num_cpus=0.1))],
                      ingress=IngressSpec(num_cpus=0.1), auth={"tokenFile": str(serving_cluster.home / "serve-token")})
    deploy(cfg, Settings.load())
    try:
        auth = {"Authorization": f"Bearer {token}"}
        c = httpclient.InferenceServerClient(url=serving_cluster.url.split("//")[1] + "/onnx")
        assert c.is_model_ready("onnxdigits", headers=auth)
        x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        res = c.infer("onnxdigits", [inp], headers=auth, request_id="o1")
        probs = res.as_numpy("probabilities")
        with torch.no_grad():
            want = model.predict_proba(torch.from_numpy(x)).numpy()
        assert probs.shape == (5, 3) and np.allclose(probs, want, atol=1e-5)
        assert res.get_response()["model_version"] == str(version)
    finally:
        shutdown("onnx")
