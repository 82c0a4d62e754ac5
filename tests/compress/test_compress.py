"""Compression and export without Ray: int8 is really int8, ONNX parity catches a broken export, the gate's choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aimass.compress import (
    Candidate,
    check_parity,
    directory_size_mb,
    export_onnx,
    measure_candidate,
    prune_magnitude,
    quantize_dynamic_int8,
    quantized_modules,
    select_candidate,
    sparsity,
)
from aimass.exceptions import SpecError, StepError
from aimass.models import ModelCard, build_model
from aimass.models.io import CARD_FILE, load_model, save_model
from aimass.spec.configs.register import Threshold


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    return x[idx[:1400]], y[idx[:1400]], x[idx[1400:]], y[idx[1400:]]


@pytest.fixture(scope="module")
def trained(digits):
    """A zoo MLP trained in-process on digits (a few seconds): compression must keep what it learned."""
    x, y, _, _ = digits
    card = ModelCard(name="mlp", input_shape=[64], num_classes=10, args={"hidden": [256, 128], "dropout": 0.0},
                     class_names=[str(i) for i in range(10)], feature_mean=x.mean(0).tolist(),
                     feature_scale=np.where(x.std(0) < 1e-8, 1.0, x.std(0)).tolist())
    torch.manual_seed(0)
    model = build_model(card)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(8):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    return model.eval()


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model.predict_proba(torch.from_numpy(x)).numpy().argmax(1) == y).mean())


def test_int8_model_is_really_int8_small_on_disk_and_keeps_its_accuracy(trained, digits, tmp_path):
    _, _, xt, yt = digits
    q, info = quantize_dynamic_int8(trained)
    assert info["quantized_modules"] == ["net.1", "net.4", "net.7"] == quantized_modules(q)
    assert quantized_modules(trained) == []  # the original is untouched
    assert q.card.compression == {"quantize": "dynamic_int8"} and trained.card.compression is None
    save_model(trained, tmp_path / "fp32")
    save_model(q, tmp_path / "int8")
    assert not (tmp_path / "int8" / "weights.safetensors").exists() and (tmp_path / "int8" / "weights.pt").is_file()
    ratio = directory_size_mb(tmp_path / "int8") / directory_size_mb(tmp_path / "fp32")
    assert ratio < 0.35, ratio  # int8 weights: about a quarter of fp32, plus the card and scales
    loaded = load_model(tmp_path / "int8")
    assert quantized_modules(loaded) == info["quantized_modules"]
    packed = loaded.net[1]._packed_params._weight_bias()[0]
    assert packed.dtype == torch.qint8
    x = torch.from_numpy(xt[:50])
    assert torch.equal(loaded.predict_proba(x), q.predict_proba(x))  # saved and loaded exactly
    acc_fp32, acc_int8 = _accuracy(trained, xt, yt), _accuracy(loaded, xt, yt)
    assert acc_fp32 > 0.9 and acc_fp32 - acc_int8 <= 0.01, (acc_fp32, acc_int8)


def test_quantization_that_does_not_apply_is_a_clear_error():
    from torch import nn

    class Convs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3)

    with pytest.raises(SpecError, match="dynamic int8 quantization does not apply: the model has no Linear layer"):
        quantize_dynamic_int8(Convs())
    card = ModelCard(name="logreg", input_shape=[4], num_classes=3)
    with pytest.raises(SpecError, match="structured pruning needs a hidden layer"):
        prune_magnitude(build_model(card), 0.5, structured=True)
    with pytest.raises(SpecError, match="unknown quantization 'int4'"):
        from aimass.compress import apply_compression

        apply_compression(build_model(card), {"quantize": "int4"})


def test_pruning_zeroes_the_share_asked_for_and_structured_keeps_every_class(trained, digits, tmp_path):
    p, info = prune_magnitude(trained, 0.5)
    assert abs(info["sparsity"] - 0.5) < 0.01 and abs(sparsity(p) - 0.5) < 0.01 and sparsity(trained) < 0.01
    assert not any(n.endswith("_orig") or n.endswith("_mask") for n, _ in p.named_parameters())  # made permanent
    save_model(p, tmp_path / "p")
    assert sparsity(load_model(tmp_path / "p")) == pytest.approx(sparsity(p))
    s, _ = prune_magnitude(trained, 0.5, structured=True)
    rows_zero = (s.net[1].weight.abs().sum(1) == 0).float().mean().item()
    assert rows_zero == pytest.approx(0.5, abs=0.01)
    assert (s.net[7].weight.abs().sum(1) > 0).all()  # the output layer (the classes) is never pruned


def _onnx_dir(model, d):
    export_onnx(model, d, list(model.card.input_shape))
    card = model.card.to_dict() | {"runtime": "onnxruntime"}
    (d / CARD_FILE).write_text(json.dumps(card))
    return d


def test_onnx_export_matches_torch_and_loads_behind_the_zoo_contract(trained, digits, tmp_path):
    _, _, xt, _ = digits
    d = _onnx_dir(trained, tmp_path / "onnx")
    rep = check_parity(trained, d / "model.onnx", xt)
    assert rep.passed and rep.max_abs_diff < 1e-5 and rep.class_agreement == 1.0 and rep.rows == len(xt)
    om = load_model(d)
    x = torch.from_numpy(xt[:7])
    assert torch.allclose(om.predict_proba(x), trained.predict_proba(x), atol=1e-5)
    save_model(om, tmp_path / "copy")  # the register step re-saves through save_model
    assert (tmp_path / "copy" / "model.onnx").read_bytes() == (d / "model.onnx").read_bytes()
    with pytest.raises(SpecError, match="CPU provider only"):
        om.to("cuda")


def test_the_parity_check_fails_on_a_deliberately_broken_export(trained, digits, tmp_path):
    import onnx
    from onnx import numpy_helper

    from aimass.spec.configs.compress import ParityConfig
    from aimass.steps.compress import _parity_or_fail

    _, _, xt, _ = digits
    d = _onnx_dir(trained, tmp_path / "onnx")
    m = onnx.load(str(d / "model.onnx"))
    for init in m.graph.initializer:  # break the exported graph: flip the sign of the largest weight matrix
        arr = numpy_helper.to_array(init)
        if arr.ndim == 2 and arr.size > 10_000:
            init.CopyFrom(numpy_helper.from_array(-arr, init.name))
            break
    else:
        pytest.fail("no weight matrix found in the exported graph")
    onnx.save(m, str(d / "model.onnx"))
    rep = check_parity(trained, d / "model.onnx", xt)
    assert not rep.passed and rep.class_agreement < 0.9
    with pytest.raises(StepError, match="ONNX Runtime does not match torch"):
        _parity_or_fail(trained, d, xt, ParityConfig(), "export")


def test_an_unsupported_operator_is_named_and_nothing_is_left_behind(tmp_path):
    from torch import nn

    class Weird(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x.reshape(-1, 2, 2)).real.reshape(x.shape[0], -1)

    with pytest.raises(StepError, match=r"ONNX export failed on unsupported operator .*eig"):
        export_onnx(Weird(), tmp_path / "w", [4])
    assert not (tmp_path / "w" / "model.onnx").exists()


def test_every_candidate_is_measured_on_the_same_rows(trained, digits, tmp_path):
    _, _, xt, yt = digits
    save_model(trained, tmp_path / "o")
    q, _ = quantize_dynamic_int8(trained)
    save_model(q, tmp_path / "q")
    rows = [measure_candidate(n, n, load_model(tmp_path / n), tmp_path / n, xt, yt, trained.card.class_names,
                              latency_iters=20, throughput_batches=3) for n in ("o", "q")]
    for c in rows:
        assert 0.9 < c.metrics["accuracy"] <= 1.0 and c.size_mb > 0 and 0 < c.latency_p50_ms <= c.latency_p95_ms
        assert c.throughput_rows_s > 0
    assert rows[1].size_mb < rows[0].size_mb / 2.5


TABLE = [  # name, accuracy, size MB, p50 ms
    ("original", 0.950, 4.0, 1.00),
    ("int8", 0.945, 1.1, 0.40),
    ("pruned-50", 0.900, 4.0, 1.00),
    ("onnx", 0.950, 4.1, 0.30),
]


def _table() -> list[Candidate]:
    return [Candidate(name=n, method=n, key=n, root="/", metrics={"accuracy": a}, size_mb=s, latency_p50_ms=p) for n, a, s, p in TABLE]


def test_the_gate_picks_the_right_candidate_from_a_fixed_table():
    sel = select_candidate(_table(), metric="accuracy", max_metric_drop=0.01)
    assert sel.chosen.name == "int8"  # smallest passing; pruned drops 0.05
    assert sel.passed == {"original": True, "int8": True, "pruned-50": False, "onnx": True}
    assert sel.reasons["pruned-50"] == ["accuracy drops 0.0500 vs original > max 0.01"]
    assert select_candidate(_table(), metric="accuracy", max_metric_drop=0.01, prefer="latency").chosen.name == "onnx"
    assert select_candidate(_table(), metric="accuracy", max_latency_ms=0.35).chosen.name == "onnx"
    assert select_candidate(_table(), metric="accuracy", select="best-metric", max_size_mb=4.05).chosen.name == "original"
    sel = select_candidate(_table(), metric="accuracy", thresholds=[Threshold(metric="accuracy", min=0.948)], max_size_mb=2.0)
    assert sel.chosen is None
    assert sel.reasons["int8"] == ["accuracy=0.9450 < min 0.948"] and sel.reasons["onnx"] == ["size 4.100 MB > max 2.0 MB"]
