"""Evaluation metrics per target kind, on arrays; and how evaluate calls a model (predict_heads, else predict_proba)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from aimass.data import Dataset, TargetSpec
from aimass.exceptions import StepError
from aimass.steps.evaluate import (
    classification_metrics,
    model_inputs,
    multilabel_metrics,
    predict_outputs,
    regression_metrics,
    target_metrics,
)


def test_regression_metrics_by_hand_and_per_output():
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    p = np.array([[1.5, 10.0], [2.0, 22.0], [2.0, 30.0], [4.0, 36.0]])
    m, per = regression_metrics(y, p, ["a", "b"])
    mae_a, mae_b = np.mean([0.5, 0, 1, 0]), np.mean([0, 2, 0, 4])
    rmse_a, rmse_b = np.sqrt(np.mean([0.25, 0, 1, 0])), np.sqrt(np.mean([0, 4, 0, 16]))
    r2_a, r2_b = 1 - 1.25 / 5.0, 1 - 20 / 500.0
    assert m["mae"] == pytest.approx((mae_a + mae_b) / 2) and m["rmse"] == pytest.approx((rmse_a + rmse_b) / 2)
    assert m["r2"] == pytest.approx((r2_a + r2_b) / 2) and m["mae_b"] == pytest.approx(mae_b)
    assert per["a"]["r2"] == pytest.approx(r2_a) and per["b"]["rmse"] == pytest.approx(rmse_b)
    assert per["a"]["r2"] == pytest.approx(skm.r2_score(y[:, 0], p[:, 0]))
    one, _ = regression_metrics(np.array([3.0, 3.0]), np.array([2.0, 4.0]), ["y"])
    assert one == {"mae": 1.0, "rmse": 1.0}  # constant truth: R2 undefined, left out rather than faked


def test_multilabel_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < [0.2, 0.5, 0.8]).astype(np.float32)
    y[:, 2] = 1  # a label present everywhere has no AUC
    scores = np.clip(y * 0.6 + rng.random((200, 3)) * 0.5, 0, 1)
    m, per = multilabel_metrics(y, scores, ["x", "y", "z"])
    pred = scores >= 0.5
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc_x"] == pytest.approx(skm.roc_auc_score(y[:, 0], scores[:, 0])) and "roc_auc_z" not in m
    assert m["roc_auc_macro"] == pytest.approx((m["roc_auc_x"] + m["roc_auc_y"]) / 2)
    assert per["z"]["support"] == 200 and "roc_auc" not in per["z"]
    assert 0.5 < m["f1_micro"] <= 1 and m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))


def test_classification_metrics_unchanged_and_dispatch():
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.eye(3)[[0, 1, 2, 1, 1, 0]] * 0.8 + 0.2 / 3
    m, rep = classification_metrics(y, proba, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 6) and "roc_auc_ovr" in m and rep["c"]["recall"] == 0.5
    assert target_metrics("classification", y, proba, ["a", "b", "c"])[0] == m
    assert target_metrics("regression", y.astype(float), y.astype(float), ["v"])[0]["mae"] == 0
    with pytest.raises(ValueError, match="unknown target kind"):
        target_metrics("ranking", y, proba, [])


def _table_ds(n=12) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    c = rng.integers(0, 3, size=(n, 1))
    y = (x[:, 0] > 0).astype(np.int64)
    r = x[:, :1] * 2
    sl = slice(0, n)
    return Dataset(x, y, x[:0], y[:0], x[sl], y[sl], ["neg", "pos"], np.zeros(2, np.float32), np.ones(2, np.float32),
                   modality="table", targets=[TargetSpec("label", "classification", ["neg", "pos"]), TargetSpec("r", "regression", ["r"])],
                   extra_y={"r": {"train": r, "val": r[:0], "test": r}}, c_train=c, c_val=c[:0], c_test=c)


class _TwoHeads(torch.nn.Module):
    """A real (untrained) two-head table model with the predict_heads contract."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(4, 2)
        self.cls = torch.nn.Linear(4, 2)
        self.reg = torch.nn.Linear(4, 1)
        self.calls: list[tuple] = []

    def predict_heads(self, x, c):
        self.calls.append((x.dtype, c.dtype, len(x)))
        h = torch.cat([x, self.emb(c[:, 0])], dim=1)
        return {"label": torch.softmax(self.cls(h), -1), "r": self.reg(h)}


def test_predict_outputs_uses_predict_heads_with_table_inputs_in_batches():
    ds = _table_ds()
    model = _TwoHeads()
    out = predict_outputs(model, ds, "test", batch_size=5)
    assert [len(c) for c in (out["label"], out["r"])] == [12, 12] and out["r"].shape == (12, 1)
    assert model.calls == [(torch.float32, torch.int64, 5), (torch.float32, torch.int64, 5), (torch.float32, torch.int64, 2)]
    assert np.allclose(out["label"].sum(1), 1, atol=1e-5)
    assert [a.shape for a in model_inputs(ds, "test")] == [(12, 2), (12, 1)]


def test_predict_outputs_falls_back_to_predict_proba_and_names_missing_heads():
    ds = _table_ds()

    class OneHead(torch.nn.Module):
        def predict_proba(self, x):
            return torch.softmax(torch.stack([-x[:, 0], x[:, 0]], 1), -1)

    with pytest.raises(StepError, match=r"no output for target\(s\) \['r'\]"):
        predict_outputs(OneHead(), ds, "test", 4)
    ds.targets, ds.extra_y = ds.targets[:1], {}
    out = predict_outputs(OneHead(), ds, "test", 4)
    assert (out["label"].argmax(1) == ds.y_test).all()
