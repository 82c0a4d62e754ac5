"""The weights are really used: pretrained beats random, LoRA is cheap and close to full fine-tuning,
and a model initialised from the registered champion starts at the champion's loss.

Kept CPU-cheap: short texts (maxLength 16), a few hundred examples, 2 epochs, 2 torch threads.
"""

from __future__ import annotations

import json

import pytest
import torch

from aimass.models import ModelCard
from aimass.models.transfer import init_model, resolve_source, trainable_parameters
from aimass.training.loop import SplitData, evaluate_arrays
from tests.models._support import (
    NEG_TRAIN,
    NEG_VAL,
    POS_TRAIN,
    POS_VAL,
    fit,
    minilm_dir,
    sentiment,
)

pytestmark = pytest.mark.slow

N_TRAIN, N_VAL, EPOCHS = 160, 96, 2


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def texts():
    # validation sentences use sentiment words that never occur in training
    return sentiment(N_TRAIN, POS_TRAIN, NEG_TRAIN, 0), sentiment(N_VAL, POS_VAL, NEG_VAL, 1)


def _card() -> ModelCard:
    return ModelCard("text-transformer", [], 2, {"maxLength": 16}, class_names=["neg", "pos"], input_kind="text")


def _run(model, texts, lr):
    (x, y), (xv, yv) = texts
    return fit(model, SplitData(model, x, {"label": y}), SplitData(model, xv, {"label": yv}), epochs=EPOCHS, lr=lr)


@pytest.fixture(scope="module")
def full_finetune(texts):
    torch.manual_seed(0)
    model, _, _ = init_model(_card(), {"from": str(minilm_dir())}, resolve_source(str(minilm_dir())))
    return _run(model, texts, 1e-4)


def test_pretrained_minilm_beats_random_weights_at_the_same_budget(texts, full_finetune):
    torch.manual_seed(0)
    cfg = json.loads((minilm_dir() / "config.json").read_text())
    card = ModelCard("text-transformer", [], 2, {"maxLength": 16, "config": cfg, "tokenizer": str(minilm_dir())},
                     class_names=["neg", "pos"], input_kind="text")
    random_model, _, _ = init_model(card, None)  # the same architecture and tokenizer, random weights
    scratch = _run(random_model, texts, 1e-4)
    print(f"pretrained {full_finetune}  random {scratch}")
    assert full_finetune["val_accuracy"] >= 0.85, full_finetune
    assert full_finetune["val_accuracy"] >= scratch["val_accuracy"] + 0.2, (full_finetune, scratch)
    assert full_finetune["val_loss"] < scratch["val_loss"]


def test_lora_trains_under_one_percent_and_lands_near_full_finetuning(texts, full_finetune):
    torch.manual_seed(0)
    lora = {"r": 8, "alpha": 16, "targetModules": ["query", "value"]}
    model, _, _ = init_model(_card(), {"from": str(minilm_dir()), "lora": lora}, resolve_source(str(minilm_dir())))
    counts = trainable_parameters(model)
    share = counts["trainable_params"] / counts["total_params"]
    got = _run(model, texts, 2e-3)
    print(f"LoRA trains {share:.3%} of {counts['total_params']} parameters: {got}  full: {full_finetune}")
    assert share < 0.01
    assert got["val_accuracy"] >= full_finetune["val_accuracy"] - 0.1, (got, full_finetune)  # the stated margin: 10 points


def test_initialised_from_the_registered_champion_starts_at_its_loss(tmp_path, texts):
    """Train a small text model, register it as champion in MLflow, start a new model from models:/NAME@champion."""
    from aimass.models.io import save_model
    from aimass.tracking import Tracker
    from tests.models.test_transfer import TINY

    torch.manual_seed(0)
    (x, y), (xv, yv) = texts
    card = ModelCard("text-transformer", [], 2, {"config": TINY, "maxLength": 16, "tokenizer": str(minilm_dir())},
                     class_names=["neg", "pos"], input_kind="text")
    champion, _, _ = init_model(card, None)
    fit(champion, SplitData(champion, x, {"label": y}), SplitData(champion, xv, {"label": yv}), epochs=10, lr=3e-3)
    train_eval = SplitData(champion, x, {"label": y})
    champion_loss = evaluate_arrays(champion, train_eval)[0]

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri)
    exp = tr.ensure_experiment("champion-init", str(tmp_path / "art"))
    run = tr.start_run(exp, "register", {})
    model_uri = tr.log_model(run, save_model(champion, tmp_path / "champion"), [], 2)
    version = tr.register(model_uri, "sentiment", run_id=run)
    tr.set_alias("sentiment", "champion", version)

    source = resolve_source("models:/sentiment@champion", tracking_uri=uri, work_dir=tmp_path / "dl")
    torch.manual_seed(123)  # different seed: nothing but the loaded weights can make the losses agree
    updated, ucard, lineage = init_model(card, {"from": "models:/sentiment@champion"}, source)
    start_loss = evaluate_arrays(updated, SplitData(updated, x, {"label": y}))[0]
    fresh, _, _ = init_model(card, None)
    random_loss = evaluate_arrays(fresh, SplitData(fresh, x, {"label": y}))[0]
    print(f"champion {champion_loss:.4f}  initialised from it {start_loss:.4f}  random {random_loss:.4f}")
    assert abs(start_loss - champion_loss) < 1e-5
    assert random_loss > champion_loss + 0.1
    assert lineage["model"] == "sentiment" and lineage["version"] == version and lineage["source"] == "models:/sentiment@champion"
    assert ucard.init_from == "models:/sentiment@champion" and lineage["new_head"] is False
