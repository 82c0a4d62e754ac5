"""Ensembles: better than their weakest member, saved and loaded as one model, members checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimass.compress.ensemble import EnsembleModel, check_members, fit_ensemble
from aimass.exceptions import SpecError
from aimass.models import ModelCard, build_model
from aimass.models.io import load_model


@pytest.fixture(scope="module")
def task():
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=1500, n_features=20, n_informative=8, n_classes=4, n_clusters_per_class=2,
                               class_sep=0.8, random_state=7)
    x = x.astype(np.float32)
    return (x[:900], y[:900]), (x[900:1200], y[900:1200]), (x[1200:], y[1200:])


def _train(arch: str, hidden, seed: int, x, y, epochs: int):
    torch.manual_seed(seed)
    card = ModelCard(name=arch, input_shape=[20], num_classes=4, args={"hidden": hidden, "dropout": 0.0} if hidden else {},
                     class_names=["a", "b", "c", "d"])
    m = build_model(card)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xt[idx]), yt[idx]).backward()
            opt.step()
    return m.eval()


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model.predict_proba(torch.from_numpy(x)).numpy().argmax(1) == y).mean())


@pytest.fixture(scope="module")
def members(task):
    torch.set_num_threads(1)
    (x, y), _, _ = task
    return [_train("logreg", None, 0, x, y, 10), _train("mlp", [32], 1, x, y, 12), _train("mlp", [64, 32], 2, x, y, 12)]


@pytest.mark.parametrize("method", ["soft", "hard", "weighted", "stacking"])
def test_an_ensemble_of_three_beats_its_weakest_member_and_round_trips(members, task, method, tmp_path):
    _, (xv, yv), (xt, yt) = task
    accs = [_acc(m, xt, yt) for m in members]
    params = fit_ensemble(members, method, xv, yv)
    ens = EnsembleModel.build(members, method, params, [{"dir": f"m{i}", "source": "test"} for i in range(3)])
    acc = _acc(ens, xt, yt)
    assert acc > min(accs) + 0.02, (method, acc, accs)
    if method == "weighted":
        assert len(params["weights"]) == 3 and abs(sum(params["weights"]) - 1) < 1e-6
    from aimass.models.io import save_model

    save_model(ens, tmp_path / "e")
    back = load_model(tmp_path / "e")
    assert type(back).__name__ == "EnsembleModel" and back.card.runtime == "ensemble" and back.card.args["method"] == method
    x = torch.from_numpy(xt[:20])
    assert torch.allclose(back.predict_proba(x), ens.predict_proba(x), atol=1e-6)
    assert torch.allclose(back.predict_proba(x).sum(1), torch.ones(20), atol=1e-5)


def test_members_with_different_inputs_or_classes_are_refused():
    a = ModelCard(name="logreg", input_shape=[20], num_classes=4, class_names=list("abcd"))
    b = ModelCard(name="logreg", input_shape=[21], num_classes=4, class_names=list("abcd"))
    c = ModelCard(name="logreg", input_shape=[20], num_classes=3, class_names=list("abc"))
    with pytest.raises(SpecError, match=r"take different inputs: x \[20\] vs y \[21\]"):
        check_members([a, b], ["x", "y"])
    with pytest.raises(SpecError, match="predict different classes"):
        check_members([a, c], ["x", "z"])
    with pytest.raises(SpecError, match="at least two members"):
        check_members([a], ["x"])
