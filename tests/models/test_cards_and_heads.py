"""Model cards, heads and losses, the vision and tabular families (fast: tiny models, no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from aimass.exceptions import SpecError
from aimass.models import ModelCard, build_model
from aimass.models.heads import heads_loss
from aimass.models.io import load_model, save_model
from aimass.training.loop import SplitData, evaluate_arrays, make_optimizer, run_epoch

HEADS = [{"name": "kind", "kind": "classification", "class_names": ["a", "b", "c"]},
         {"name": "tags", "kind": "multilabel", "class_names": ["x", "y"], "loss_weight": 2.0},
         {"name": "price", "kind": "regression", "class_names": ["p"], "loss_weight": 0.5}]


def test_old_card_still_loads_with_defaults(tmp_path):
    old = {"name": "mlp", "input_shape": [4], "num_classes": 3, "args": {"hidden": [8]}, "class_names": ["a", "b", "c"],
           "feature_mean": None, "feature_scale": None, "input_name": "input", "output_name": "probabilities"}
    card = ModelCard.from_dict(old)
    assert card.input_kind == "tensor" and card.heads == [] and card.lineage == {} and card.init_from is None
    assert card.head_specs == [{"name": "label", "kind": "classification", "class_names": ["a", "b", "c"], "loss_weight": 1.0,
                                "num_outputs": 3}]
    model = build_model(card)
    save_model(model, tmp_path / "m")
    (tmp_path / "m" / "card.json").write_text(json.dumps(old))  # exactly what an earlier aimass wrote
    again = load_model(tmp_path / "m")
    out = again(torch.zeros(2, 4))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)  # one head: a tensor, as before


def test_multi_head_outputs_and_weighted_losses_per_kind():
    card = ModelCard("mlp", [4], 3, {"hidden": [8], "dropout": 0.0}, class_names=["a", "b", "c"], heads=HEADS)
    model = build_model(card)
    x = torch.randn(6, 4)
    out = model(x)
    assert set(out) == {"kind", "tags", "price"}
    assert out["kind"].shape == (6, 3) and out["tags"].shape == (6, 2) and out["price"].shape == (6, 1)
    y = {"kind": torch.tensor([0, 1, 2, 0, 1, 2]), "tags": torch.randint(0, 2, (6, 2)).float(), "price": torch.randn(6, 1)}
    want = (nn.functional.cross_entropy(out["kind"], y["kind"])
            + 2.0 * nn.functional.binary_cross_entropy_with_logits(out["tags"], y["tags"])
            + 0.5 * nn.functional.mse_loss(out["price"], y["price"]))
    assert torch.allclose(heads_loss(out, y, card.head_specs), want, atol=1e-6)
    pred = model.predict_heads(x.numpy())
    assert np.allclose(pred["kind"].sum(1), 1, atol=1e-5)
    assert ((pred["tags"] > 0) & (pred["tags"] < 1)).all()
    assert np.allclose(pred["price"], out["price"].detach().numpy(), atol=1e-5)


def test_multi_task_training_lowers_every_heads_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    targets = {"kind": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0).astype(np.int64),
               "tags": np.stack([x[:, 2] > 0, x[:, 3] > 0], 1).astype(np.float32),
               "price": (x[:, :1] * 3 + 1).astype(np.float32)}
    card = ModelCard("mlp", [4], 3, {"hidden": [32], "dropout": 0.0}, class_names=["a", "b", "c"], heads=HEADS)
    model = build_model(card)
    data = SplitData(model, x, targets)
    before = evaluate_arrays(model, data)[0]
    opt = make_optimizer(model.parameters(), {"lr": 1e-2})
    for epoch in range(30):
        run_epoch(model, opt, None, None, None, data, 64, epoch, 0)
    after, acc = evaluate_arrays(model, data)
    assert after < before * 0.3, (before, after)
    assert acc > 0.85
    pred = model.predict_heads(x)
    assert np.abs(pred["price"] - targets["price"]).mean() < 0.5
    assert ((pred["tags"] > 0.5) == targets["tags"].astype(bool)).mean() > 0.9


@pytest.mark.parametrize("name,args", [("resnet", {"widths": [8, 16], "blocks": [1, 1]}), ("vit", {"dim": 32, "depth": 2, "heads": 2}),
                                       ("cnn", {"channels": [8]}),
                                       ("hf-vision", {"config": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1,
                                                                 "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 4}})])
def test_vision_models_take_uint8_images_normalised_with_the_cards_preprocess(name, args, tmp_path):
    pre = {"image": {"size": [16, 16], "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "resize": "resize"}}
    card = ModelCard(name, [3, 16, 16], 2, args, class_names=["circle", "square"], input_kind="image", preprocess=pre)
    model = build_model(card)
    assert torch.allclose(model.feature_mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    imgs = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    (t,) = model.encode(imgs)
    assert t.dtype == torch.uint8  # raw pixels travel; the model divides by 255 and normalises
    p = model.predict_proba(imgs)
    assert p.shape == (4, 2) and torch.allclose(p.sum(1), torch.ones(4), atol=1e-5)
    save_model(model, tmp_path / "m")
    assert torch.allclose(load_model(tmp_path / "m").predict_proba(imgs), p, atol=1e-5)


def test_image_statistics_on_the_255_scale_are_brought_to_0_1():
    pre = {"image": {"size": [8, 8], "channels": 1, "mean": [127.5], "std": [63.75]}}
    model = build_model(ModelCard("cnn", [1, 8, 8], 2, {}, class_names=["a", "b"], input_kind="image", preprocess=pre))
    assert torch.allclose(model.feature_mean.flatten(), torch.tensor([0.5])) and torch.allclose(model.feature_scale.flatten(), torch.tensor([0.25]))


def test_vision_model_learns_shapes():
    """A small ResNet tells horizontal from vertical stripes: raw uint8 images reach it intact and it learns from them."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 128)
    x = rng.integers(0, 60, (128, 1, 8, 8)).astype(np.uint8)
    for i, c in enumerate(y):
        if c == 0:
            x[i, 0, ::2, :] += 150
        else:
            x[i, 0, :, ::2] += 150
    card = ModelCard("resnet", [1, 8, 8], 2, {"widths": [8], "blocks": [1]}, class_names=["l", "r"], input_kind="image",
                     preprocess={"image": {"size": [8, 8], "channels": 1, "mean": [0.45], "std": [0.3]}})
    model = build_model(card)
    data = SplitData(model, x, {"label": y})
    opt = make_optimizer(model.parameters(), {"lr": 1e-2})
    for epoch in range(8):
        run_epoch(model, opt, None, None, None, data, 32, epoch, 0)
    assert evaluate_arrays(model, data)[1] > 0.95


def test_tabular_mlp_uses_categorical_embeddings():
    """The label depends only on a categorical column: the model must read it through its embedding."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    c = rng.integers(1, 5, (300, 1))  # codes 1..4, 0 = missing
    y = (c[:, 0] % 2).astype(np.int64)
    x = rng.normal(size=(300, 2)).astype(np.float32)
    pre = {"categorical": {"columns": ["colour"], "vocab": {"colour": ["red", "green", "blue", "grey"]}}}
    card = ModelCard("tab-mlp", [2], 2, {"hidden": [16], "dropout": 0.0}, class_names=["even", "odd"], input_kind="table",
                     preprocess=pre)
    model = build_model(card)
    assert model.net.embeddings[0].num_embeddings == 5
    data = SplitData(model, x, {"label": y}, c=c)
    opt = make_optimizer(model.parameters(), {"lr": 1e-2})
    for epoch in range(20):
        run_epoch(model, opt, None, None, None, data, 64, epoch, 0)
    assert evaluate_arrays(model, data)[1] > 0.97
    # an unseen code (past the vocabulary) counts as missing instead of failing
    assert model.predict_proba(x[:2], np.array([[99], [0]])).shape == (2, 2)


def test_model_that_does_not_take_the_input_kind_is_a_clear_error():
    with pytest.raises(SpecError, match="does not take text input"):
        build_model(ModelCard("resnet", [], 2, {}, class_names=["a", "b"], input_kind="text"))
    with pytest.raises(SpecError, match="unknown kind 'ranking'"):
        build_model(ModelCard("mlp", [4], 2, {}, heads=[{"name": "r", "kind": "ranking", "class_names": ["a"]}]))
