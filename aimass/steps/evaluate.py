"""The ``evaluate`` step: metrics per target kind, a per-class report and plots on a held-out split.

Metrics are pure functions of arrays (:func:`classification_metrics`, :func:`multilabel_metrics`,
:func:`regression_metrics`). The step reads the targets from the dataset and the model's outputs through
``model.predict_heads(*inputs) -> {target name: array}`` when the model has it (probabilities for
classification, sigmoid scores for multilabel, values for regression), else ``model.predict_proba(x)`` for a
single classification target. ``inputs`` per modality: tensor ``(x float32,)``; table ``(x float32, c int64)``
(``c`` only when there are categorical columns); image ``(x uint8 [N,C,H,W],)``; text ``(list[str],)``.
With several targets, each target's metrics are also logged as ``<target>.<metric>``; the primary target's
metrics keep their plain names (``accuracy``, ``rmse``, ...), which register gates compare.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aimass.steps.base import Step, StepContext

__all__ = [
    "EvaluateStep",
    "classification_metrics",
    "fetch_model",
    "model_inputs",
    "multilabel_metrics",
    "predict_outputs",
    "regression_metrics",
    "target_metrics",
]


def fetch_model(model_ref: dict[str, Any], store):
    """Load the model behind a ``model`` output (train/tune/compress) from the artifact store."""
    from aimass.models.io import load_model

    local = store.local_path(model_ref["key"])
    if local is None:
        local = store.get_dir(model_ref["key"], Path(tempfile.mkdtemp(prefix="aimass-model-")))
    return load_model(local)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> tuple[dict[str, float], dict]:
    from sklearn import metrics as skm

    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)  # float32 softmax rounding
    y_pred = proba.argmax(1)
    labels = list(range(len(class_names)))
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision_macro": skm.precision_score(y_true, y_pred, average="macro", labels=labels, zero_division=0),
        "recall_macro": skm.recall_score(y_true, y_pred, average="macro", labels=labels, zero_division=0),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0),
        "precision_weighted": skm.precision_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0),
        "recall_weighted": skm.recall_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0),
        "f1_weighted": skm.f1_score(y_true, y_pred, average="weighted", labels=labels, zero_division=0),
        "log_loss": skm.log_loss(y_true, np.clip(proba, 1e-7, 1), labels=labels),
    }
    present = np.unique(y_true)
    if len(present) >= 2:
        if len(class_names) == 2:
            out["roc_auc_ovr"] = skm.roc_auc_score(y_true, proba[:, 1])
        elif len(present) == len(class_names):
            out["roc_auc_ovr"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels)
    report = skm.classification_report(y_true, y_pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0)
    return {k: float(v) for k, v in out.items()}, report


def multilabel_metrics(y_true: np.ndarray, scores: np.ndarray, label_names: list[str],
                       threshold: float = 0.5) -> tuple[dict[str, float], dict]:
    """Micro/macro F1, precision and recall at ``threshold``, subset accuracy and per-label ROC-AUC.

    ``y_true`` 0/1 ``[N, L]``; ``scores`` sigmoid outputs ``[N, L]``. A label whose true values are all equal has
    no AUC (left out of ``roc_auc_macro``).

    Example:
        >>> m, _ = multilabel_metrics(np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.2], [0.1, 0.8]]), ["a", "b"])
        >>> m["f1_micro"], m["roc_auc_macro"]
        (1.0, 1.0)
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).reshape(len(y_true), -1).astype(int)
    scores = np.asarray(scores, dtype=np.float64).reshape(y_true.shape)
    pred = (scores >= threshold).astype(int)
    out = {
        "f1_micro": skm.f1_score(y_true, pred, average="micro", zero_division=0),
        "f1_macro": skm.f1_score(y_true, pred, average="macro", zero_division=0),
        "precision_micro": skm.precision_score(y_true, pred, average="micro", zero_division=0),
        "recall_micro": skm.recall_score(y_true, pred, average="micro", zero_division=0),
        "subset_accuracy": skm.accuracy_score(y_true, pred),
        "hamming_loss": skm.hamming_loss(y_true, pred),
    }
    per_label: dict[str, dict[str, float]] = {}
    aucs = []
    for j, name in enumerate(label_names):
        entry = {"f1": float(skm.f1_score(y_true[:, j], pred[:, j], zero_division=0)), "support": float(y_true[:, j].sum())}
        if 0 < y_true[:, j].sum() < len(y_true):
            auc = float(skm.roc_auc_score(y_true[:, j], scores[:, j]))
            entry["roc_auc"] = auc
            out[f"roc_auc_{_metric_name(name)}"] = auc
            aucs.append(auc)
        per_label[str(name)] = entry
    if aucs:
        out["roc_auc_macro"] = float(np.mean(aucs))
    return {k: float(v) for k, v in out.items()}, per_label


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, output_names: list[str]) -> tuple[dict[str, float], dict]:
    """MAE, RMSE and R² (averaged over outputs, and per output when there are several).

    Example:
        >>> m, _ = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), ["y"])
        >>> round(m["mae"], 4), round(m["rmse"], 4), round(m["r2"], 4)
        (0.3333, 0.5774, 0.5)
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(y_true.shape)
    err = y_pred - y_true
    mae = np.abs(err).mean(axis=0)
    rmse = np.sqrt((err ** 2).mean(axis=0))
    ss_res = (err ** 2).sum(axis=0)
    ss_tot = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.nan)
    out = {"mae": float(mae.mean()), "rmse": float(rmse.mean())}
    if np.isfinite(r2).any():
        out["r2"] = float(np.nanmean(r2))
    per_output = {}
    for j, name in enumerate(output_names):
        per_output[str(name)] = {"mae": float(mae[j]), "rmse": float(rmse[j]), "r2": float(r2[j]) if np.isfinite(r2[j]) else None}
        if len(output_names) > 1:
            out[f"mae_{_metric_name(name)}"] = float(mae[j])
            out[f"rmse_{_metric_name(name)}"] = float(rmse[j])
    return out, per_output


def target_metrics(kind: str, y_true: np.ndarray, output: np.ndarray, names: list[str]) -> tuple[dict[str, float], dict]:
    """The metrics of one target by its kind ("classification" | "multilabel" | "regression")."""
    if kind == "classification":
        return classification_metrics(np.asarray(y_true), np.asarray(output, dtype=np.float64).reshape(len(y_true), -1), names)
    if kind == "multilabel":
        return multilabel_metrics(y_true, output, names)
    if kind == "regression":
        return regression_metrics(y_true, output, names)
    raise ValueError(f"unknown target kind {kind!r}")


def _metric_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))[:60]


def model_inputs(ds, split: str) -> list[np.ndarray]:
    """What a model's ``predict_heads`` takes for a split, per modality (see the module docstring)."""
    x, _ = ds.split(split)
    if ds.modality == "table":
        c = ds.categorical(split)
        return [x, c] if c is not None and c.shape[1] > 0 else [x]
    return [x]


def _to_model(a: np.ndarray, modality: str):
    import torch

    if a.dtype.kind in "US":
        return [str(t) for t in a.tolist()]
    if a.dtype == np.uint8 or a.dtype == np.int64:
        return torch.as_tensor(a)
    return torch.as_tensor(a, dtype=torch.float32)


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().float().numpy()
    return np.asarray(v)


def predict_outputs(model, ds, split: str, batch_size: int) -> dict[str, np.ndarray]:
    """Every target's model output on a split: ``predict_heads`` when the model has it, else ``predict_proba``."""
    import torch

    inputs = model_inputs(ds, split)
    n = len(inputs[0])
    primary = ds.targets[0].name
    chunks: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for i in range(0, n, batch_size):
            batch = [_to_model(a[i:i + batch_size], ds.modality) for a in inputs]
            if hasattr(model, "predict_heads"):
                out = {k: _np(v) for k, v in model.predict_heads(*batch).items()}
            else:
                out = {primary: _np(model.predict_proba(batch[0]))}
            for k, v in out.items():
                chunks.setdefault(k, []).append(v)
    outputs = {k: np.concatenate(v) for k, v in chunks.items()}
    missing = [t.name for t in ds.targets if t.name not in outputs]
    if missing:
        from aimass.exceptions import StepError

        raise StepError(f"the model has no output for target(s) {missing}", got=sorted(outputs),
                        fix="Train the model on this dataset (its heads are named after the data step's targets).")
    return outputs


def _plots(ctx: StepContext, y_true, proba, class_names, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    fig, ax = plt.subplots(figsize=(6, 6))
    ConfusionMatrixDisplay.from_predictions(y_true, proba.argmax(1), labels=list(range(len(class_names))),
                                            display_labels=class_names, ax=ax, colorbar=False)
    ax.set_title("Confusion matrix")
    ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "plots/confusion_matrix.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 5))
    for c in range(len(class_names)):
        if 0 < (y_true == c).sum() < len(y_true):
            RocCurveDisplay.from_predictions(y_true == c, proba[:, c], name=str(class_names[c]), ax=ax, plot_chance_level=(c == 0))
    ax.set_title("ROC one-vs-rest")
    ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "plots/roc_ovr.png")
    plt.close(fig)

    if history:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        ep = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        for key, ax_ in (("loss", a1), ("accuracy", a2)):
            for split in ("train", "val"):
                ys = [h.get(f"{split}_{key}") for h in history]
                if any(v is not None for v in ys):
                    ax_.plot(ep, ys, marker="o", label=split)
            ax_.set_xlabel("epoch")
            ax_.set_ylabel(key)
            ax_.legend()
        fig.suptitle("Learning curves")
        ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "plots/learning_curves.png")
        plt.close(fig)


def _residual_plot(ctx: StepContext, y_true, y_pred, names, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_true = np.asarray(y_true, dtype=float).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=float).reshape(y_true.shape)
    k = y_true.shape[1]
    fig, axes = plt.subplots(k, 2, figsize=(10, 4 * k), squeeze=False)
    for j in range(k):
        res = y_true[:, j] - y_pred[:, j]
        axes[j, 0].scatter(y_pred[:, j], res, s=8, alpha=0.6)
        axes[j, 0].axhline(0, color="k", lw=1)
        axes[j, 0].set_xlabel(f"predicted {names[j]}")
        axes[j, 0].set_ylabel("residual (true - predicted)")
        axes[j, 1].hist(res, bins=30)
        axes[j, 1].set_xlabel("residual")
    fig.suptitle(f"Residuals: {target}")
    fig.tight_layout()
    ctx.tracker.log_figure(ctx.mlflow_run_id, fig, f"plots/residuals_{_metric_name(target)}.png")
    plt.close(fig)


def _label_auc_plot(ctx: StepContext, per_label: dict, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in per_label.items() if "roc_auc" in e]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 4))
    ax.bar(names, [per_label[n]["roc_auc"] for n in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("ROC-AUC")
    ax.set_title(f"Per-label AUC: {target}")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    ctx.tracker.log_figure(ctx.mlflow_run_id, fig, f"plots/label_auc_{_metric_name(target)}.png")
    plt.close(fig)


def evaluate_targets(ds, ys: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of every target: (flat metrics, per-target reports). Pure: arrays in, numbers out.

    The primary target's metrics keep their plain names; with several targets each target's metrics are also
    given as ``<target>.<metric>``.
    """
    metrics: dict[str, float] = {}
    reports: dict[str, Any] = {}
    many = len(ds.targets) > 1
    for i, t in enumerate(ds.targets):
        m, rep = target_metrics(t.kind, ys[t.name], outputs[t.name], t.class_names)
        reports[t.name] = {"kind": t.kind, "metrics": m, "detail": rep}
        if i == 0:
            metrics.update(m)
        if many:
            metrics.update({f"{t.name}.{k}": v for k, v in m.items()})
    return metrics, reports


def log_evaluation(ctx: StepContext, ds, ys: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                   history: list[dict[str, Any]] | None = None, plots: bool = True) -> tuple[dict[str, float], dict[str, Any]]:
    """Compute, log (metrics, reports, plots per target kind) and return the step's ``metrics`` and ``report``."""
    metrics, reports = evaluate_targets(ds, ys, outputs)
    ctx.log_metrics(metrics)
    primary = ds.targets[0]
    if primary.kind == "classification":
        ctx.tracker.log_dict(ctx.mlflow_run_id, reports[primary.name]["detail"], "classification_report.json")
    ctx.tracker.log_dict(ctx.mlflow_run_id, reports, "evaluation_report.json")
    if plots:
        for t in ds.targets:
            if t.kind == "classification" and t is primary:
                _plots(ctx, ys[t.name], outputs[t.name], t.class_names, history or [])
            elif t.kind == "regression":
                _residual_plot(ctx, ys[t.name], outputs[t.name], t.class_names, t.name)
            elif t.kind == "multilabel":
                _label_auc_plot(ctx, reports[t.name]["detail"], t.name)
    report: dict[str, Any] = {}
    if primary.kind == "classification":
        report["per_class"] = {k: v for k, v in reports[primary.name]["detail"].items() if k in primary.class_names}
    if len(ds.targets) > 1 or primary.kind != "classification":
        report["targets"] = {k: {"kind": v["kind"], "metrics": v["metrics"]} for k, v in reports.items()}
    return metrics, report


class EvaluateStep(Step):
    type_name = "evaluate"

    def run(self, ctx: StepContext, config) -> dict:
        from aimass.data import open_dataset
        from aimass.exceptions import SpecError

        ds = open_dataset(ctx.inputs["dataset"], store=ctx.store)
        model_ref = ctx.inputs["model"]
        model = fetch_model(model_ref, ctx.store)
        ys = ds.targets_split(config.split)
        n = len(next(iter(ys.values())))
        if n == 0:
            raise SpecError(f"the {config.split} split is empty", fix="Give it a non-zero share in the data step's split.")
        outputs = predict_outputs(model, ds, config.split, config.batch_size)
        ctx.log_params({"split": config.split, "rows": n, "targets": [f"{t.name}:{t.kind}" for t in ds.targets]})
        metrics, report = log_evaluation(ctx, ds, ys, outputs, model_ref.get("history", []), plots=config.plots)
        return {"metrics": metrics, "report": report}
