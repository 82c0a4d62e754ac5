"""Ensembles of zoo models, registered and served as one model.

An ensemble directory holds its card (``runtime: ensemble``; the combination method and its fitted parameters as
plain JSON numbers) and one sub-directory per member, each a complete model directory (weights as data only).
Members are pinned: a registry member is recorded with its resolved version, never an alias.

Methods: ``soft`` (mean of probabilities), ``hard`` (share of votes), ``weighted`` (weights on the simplex fitted
to minimise log-loss on the validation split), ``stacking`` (a multinomial logistic regression on the members'
validation probabilities).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from aimass.exceptions import SpecError

__all__ = ["EnsembleModel", "fit_ensemble", "check_members", "METHODS"]

METHODS = ("soft", "hard", "weighted", "stacking")
MEMBERS_DIR = "members"


def check_members(cards: list[Any], names: list[str]) -> None:
    """Every member must take the same input and predict the same classes; otherwise say which differs."""
    if len(cards) < 2:
        raise SpecError("an ensemble needs at least two members", got=names,
                        fix="Add train steps to dependsOn, or registry models to `members`.")
    first = cards[0]
    for c, n in zip(cards[1:], names[1:], strict=False):
        if list(c.input_shape) != list(first.input_shape):
            raise SpecError(f"ensemble members take different inputs: {names[0]} {list(first.input_shape)} vs {n} "
                            f"{list(c.input_shape)}", fix="Ensemble models trained on the same data set.")
        if list(c.class_names) != list(first.class_names) or c.num_classes != first.num_classes:
            raise SpecError(f"ensemble members predict different classes: {names[0]} {list(first.class_names)} vs {n} "
                            f"{list(c.class_names)}", fix="Ensemble models trained on the same labels.")


def _member_probs(members: list[Any], x) -> np.ndarray:
    """[members, rows, classes] probabilities."""
    import torch

    with torch.no_grad():
        xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        return np.stack([m.predict_proba(xt).numpy() for m in members])


def _combine(probs: np.ndarray, method: str, params: dict[str, Any]) -> np.ndarray:
    if method == "soft":
        return probs.mean(0)
    if method == "weighted":
        w = np.asarray(params["weights"], dtype=np.float32)
        return np.tensordot(w, probs, axes=1)
    if method == "hard":
        votes = np.zeros_like(probs[0])
        for p in probs:
            votes[np.arange(len(p)), p.argmax(1)] += 1.0
        return votes / len(probs)
    if method == "stacking":
        feats = np.concatenate(list(probs), axis=1)
        z = feats @ np.asarray(params["coef"], dtype=np.float32).T + np.asarray(params["intercept"], dtype=np.float32)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    raise SpecError(f"unknown ensemble method {method!r}", fix=f"Use one of {', '.join(METHODS)}.")


def fit_ensemble(members: list[Any], method: str, x_val: np.ndarray, y_val: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Fit the method's parameters on the validation split (nothing to fit for soft and hard voting)."""
    if method in ("soft", "hard"):
        return {}
    if len(y_val) == 0:
        raise SpecError(f"the {method} ensemble fits on the validation split, which is empty",
                        fix="Give the data step's split a val share, or use method soft or hard.")
    probs = _member_probs(members, x_val)
    if method == "weighted":
        from scipy.optimize import minimize

        k = len(members)

        def loss(theta: np.ndarray) -> float:
            w = np.exp(theta - theta.max())
            w /= w.sum()
            p = np.tensordot(w, probs, axes=1)
            return float(-np.log(np.clip(p[np.arange(len(y_val)), y_val], 1e-7, 1)).mean())

        res = minimize(loss, np.zeros(k), method="Nelder-Mead", options={"maxiter": 400 * k, "xatol": 1e-4, "fatol": 1e-6})
        w = np.exp(res.x - res.x.max())
        return {"weights": [float(v) for v in w / w.sum()]}
    if method == "stacking":
        from sklearn.linear_model import LogisticRegression

        num_classes = probs.shape[2]
        if len(np.unique(y_val)) < num_classes:
            raise SpecError("stacking needs every class in the validation split", got=int(len(np.unique(y_val))),
                            fix="Use a larger val share, or method weighted.")
        meta = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
        meta.fit(np.concatenate(list(probs), axis=1), y_val)
        return {"coef": meta.coef_.tolist(), "intercept": meta.intercept_.tolist()}
    raise SpecError(f"unknown ensemble method {method!r}", fix=f"Use one of {', '.join(METHODS)}.")


class EnsembleModel:
    """Several zoo models combined; ``predict_proba`` on torch tensors like any zoo model."""

    def __init__(self, members: list[Any], card: Any, member_info: list[dict[str, Any]]) -> None:
        self.members = members
        self.card = card
        self.member_info = member_info
        self.training = False

    @classmethod
    def build(cls, members: list[Any], method: str, params: dict[str, Any], member_info: list[dict[str, Any]]) -> "EnsembleModel":
        card = copy.deepcopy(members[0].card)
        card.name = "ensemble"
        card.runtime = "ensemble"
        card.compression = None
        card.args = {"method": method, "params": params, "members": member_info}
        return cls(members, card, member_info)

    @classmethod
    def load(cls, directory: str | Path, card: Any, device: str = "cpu") -> "EnsembleModel":
        from aimass.models.io import load_model

        info = list(card.args.get("members") or [])
        members = [load_model(Path(directory) / MEMBERS_DIR / m["dir"], device=device) for m in info]
        return cls(members, card, info)

    def save(self, directory: str | Path) -> Path:
        from aimass.models.io import CARD_FILE, save_model

        d = Path(directory)
        for m, info in zip(self.members, self.member_info, strict=False):
            save_model(m, d / MEMBERS_DIR / info["dir"])
        (d / CARD_FILE).write_text(json.dumps(self.card.to_dict(), indent=2))
        return d

    def predict_proba(self, x):
        import torch

        probs = _member_probs(self.members, x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        return torch.from_numpy(_combine(probs, self.card.args["method"], self.card.args.get("params") or {}).astype(np.float32))

    __call__ = predict_proba

    def eval(self) -> "EnsembleModel":
        return self

    def to(self, device: str) -> "EnsembleModel":
        if str(device) != "cpu":
            raise SpecError("ensembles are served on CPU", got=str(device), fix="Serve this model with useGpu: false.")
        return self
