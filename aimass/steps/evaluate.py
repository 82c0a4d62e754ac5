"""The ``evaluate`` step: metrics, a per-class report and plots on a held-out split."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aimass.steps.base import Step, StepContext

__all__ = ["EvaluateStep", "classification_metrics", "fetch_model"]


def fetch_model(model_ref: dict[str, Any], store):
    """Load the model behind a ``model`` output (train/tune/compress) from the artifact store."""
    from aimass.models.io import load_model

    local = store.local_path(model_ref["key"])
    if local is None:
        local = store.get_dir(model_ref["key"], Path(tempfile.mkdtemp(prefix="aimass-model-")))
    return load_model(local)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, class_names: list[str]) -> tuple[dict[str, float], dict]:
    from sklearn import metrics as skm

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


class EvaluateStep(Step):
    type_name = "evaluate"

    def run(self, ctx: StepContext, config) -> dict:
        import torch

        from aimass.data import open_dataset

        ds = open_dataset(ctx.inputs["dataset"], store=ctx.store)
        model_ref = ctx.inputs["model"]
        model = fetch_model(model_ref, ctx.store)
        x, y = ds.split(config.split)
        if len(y) == 0:
            from aimass.exceptions import SpecError

            raise SpecError(f"the {config.split} split is empty", fix="Give it a non-zero share in the data step's split.")
        with torch.no_grad():
            proba = np.concatenate([model.predict_proba(torch.as_tensor(x[i:i + config.batch_size])).numpy()
                                    for i in range(0, len(y), config.batch_size)])
        metrics, report = classification_metrics(y, proba, ds.class_names)
        ctx.log_params({"split": config.split, "rows": len(y)})
        ctx.log_metrics(metrics)
        ctx.tracker.log_dict(ctx.mlflow_run_id, report, "classification_report.json")
        if config.plots:
            _plots(ctx, y, proba, ds.class_names, model_ref.get("history", []))
        return {"metrics": metrics, "report": {"per_class": {k: v for k, v in report.items() if k in ds.class_names}}}
