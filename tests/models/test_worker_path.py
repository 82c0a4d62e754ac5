"""The training worker's path for raw modalities without Ray: the initial model from the store (as the train
step prepares it), freezing from ``train.init``, per-head targets from a contract-shaped dataset, one epoch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from aimass.models import ModelCard
from aimass.models.io import save_model
from aimass.models.transfer import init_model
from aimass.storage import get_store
from aimass.training.loop import (
    build_for_training,
    evaluate_arrays,
    optimizer_for,
    run_epoch,
    split_data,
)
from tests.models._support import minilm_dir
from tests.models.test_transfer import TINY


@dataclass
class TextDataset:
    """The fields of the data contract a text dataset with two targets has (built here, not by the data step)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    extra_y: dict = field(default_factory=dict)
    modality: str = "text"

    def split(self, name):
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def targets_split(self, name):
        return {"sentiment": getattr(self, f"y_{name}"), **{k: v[name] for k, v in self.extra_y.items()}}

    def categorical(self, name):
        return None


def test_worker_builds_from_the_stored_initial_model_and_trains_two_heads(tmp_path):
    torch.manual_seed(0)
    heads = [{"name": "sentiment", "kind": "classification", "class_names": ["neg", "pos"]},
             {"name": "stars", "kind": "regression", "class_names": ["stars"], "loss_weight": 0.5}]
    card = ModelCard("text-transformer", [], 2, {"config": TINY, "maxLength": 16, "tokenizer": str(minilm_dir())},
                     class_names=["neg", "pos"], input_kind="text", heads=heads)
    model, card, _ = init_model(card, None)
    store = get_store(str(tmp_path / "store"))
    store.put_dir(save_model(model, tmp_path / "init"), "run/init")
    x = np.array(["good film", "bad film", "great plot", "awful plot"] * 8)
    y = np.array([1, 0, 1, 0] * 8)
    stars = np.where(y == 1, 1.0, -1.0).astype(np.float32)[:, None]
    ds = TextDataset(x, y, x[:8], y[:8], extra_y={"stars": {"train": stars, "val": stars[:8]}})
    config = {"card": card.to_dict(), "init_model": {"root": store.root_uri, "key": "run/init"},
              "train": {"init": {"from": "x", "freeze": ["*position_embeddings*"]}, "optimizer": {"name": "adamw", "lr": 3e-3}}}
    worker_model, counts = build_for_training(config, torch.device("cpu"))
    assert counts["trainable_params"] < counts["total_params"]
    assert all(not p.requires_grad for n, p in worker_model.named_parameters() if "position_embeddings" in n)
    assert worker_model.tokenizer is not None  # the tokenizer travelled with the stored model
    train, val = split_data(worker_model, ds, "train"), split_data(worker_model, ds, "val")
    assert set(train.targets) == {"sentiment", "stars"} and train.targets["stars"].dtype == torch.float32
    before = evaluate_arrays(worker_model, val)[0]
    opt = optimizer_for(worker_model, config["train"])
    for epoch in range(12):
        run_epoch(worker_model, opt, None, None, None, train, 8, epoch, 0)
    after, acc = evaluate_arrays(worker_model, val)
    assert after < 0.7 * before and acc == 1.0, (before, after, acc)
