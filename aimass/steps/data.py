"""The ``data`` step: read, check, split and preprocess; log statistics and the dataset input to MLflow."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from aimass.steps.base import Step, StepContext

__all__ = ["DataStep", "log_data_statistics"]

log = logging.getLogger(__name__)


def _plots(ctx: StepContext, stats: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for target, counts in stats.get("class_counts", {}).items():
        fig, ax = plt.subplots(figsize=(max(4, min(16, 0.5 * len(counts) + 2)), 4))
        ax.bar([str(k) for k in counts], list(counts.values()))
        ax.set_title(f"Class balance: {target}")
        ax.set_ylabel("rows")
        ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        ctx.tracker.log_figure(ctx.mlflow_run_id, fig, f"stats/class_balance_{target}.png")
        plt.close(fig)
    if stats.get("image_sizes"):
        sizes = np.asarray(stats["image_sizes"], dtype=float)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
        a1.hist(sizes[:, 0], bins=20)
        a1.set_xlabel("width (px)")
        a2.hist(sizes[:, 1], bins=20)
        a2.set_xlabel("height (px)")
        fig.suptitle("Image sizes (before resizing)")
        ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "stats/image_sizes.png")
        plt.close(fig)
    if stats.get("text_lengths"):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(stats["text_lengths"], bins=30)
        ax.set_xlabel("characters")
        ax.set_ylabel("rows")
        ax.set_title("Text length")
        ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "stats/text_lengths.png")
        plt.close(fig)


def log_data_statistics(ctx: StepContext, stats: dict[str, Any], plots: bool = True) -> None:
    """Class balance, per-column summaries (a table) and image-size / text-length histograms, to the step's run."""
    if stats.get("columns"):
        cols = stats["columns"]
        ctx.tracker.log_table(ctx.mlflow_run_id, {k: [c[k] for c in cols] for k in cols[0]}, "stats/columns.json")
    if stats.get("class_counts"):
        ctx.tracker.log_dict(ctx.mlflow_run_id, stats["class_counts"], "stats/class_counts.json")
    if stats.get("text_lengths"):
        t = np.asarray(stats["text_lengths"])
        ctx.log_metrics({"text_length_mean": float(t.mean()), "text_length_max": float(t.max())})
    if plots:
        _plots(ctx, stats)


class DataStep(Step):
    type_name = "data"
    code_modules = ("aimass.data.prepare", "aimass.data.sources", "aimass.data.dataset", "aimass.data.build",
                    "aimass.data.readers", "aimass.data.preprocess", "aimass.data.splits")

    def run(self, ctx: StepContext, config) -> dict:
        from aimass.data import build_dataset, save_dataset

        res = build_dataset(config, ctx.seed, endpoint_url=ctx.settings.get("s3_endpoint_url"))
        ds = res.dataset
        # Everything is checked before the first write: a bad input leaves nothing half-written in the store.
        manifest_key = ctx.key("split.json")
        ctx.store.put_bytes(manifest_key, json.dumps(res.manifest, sort_keys=True).encode())
        ref = save_dataset(ds, ctx.store, ctx.key("dataset.npz"), digest=res.digest, manifest_key=manifest_key)
        ctx.log_params({"source": config.source, "modality": ds.modality, "normalize": config.normalize,
                        "split": config.split.dump(), "input_shape": ds.input_shape, "num_classes": ds.num_classes,
                        "targets": [f"{t.name}:{t.kind}:{t.num_outputs}" for t in ds.targets], "digest": res.digest})
        metrics = dict(res.metrics)
        if ds.primary.kind == "classification":
            for i, c in enumerate(np.bincount(ds.y_train, minlength=ds.num_classes)):
                metrics[f"class_share_train_{i}"] = float(c) / max(1, len(ds.y_train))
        ctx.log_metrics(metrics)
        ctx.tracker.log_dataset_input(
            ctx.mlflow_run_id, name=f"{ctx.pipeline}/{ctx.step_name}", digest=res.digest, source=config.source,
            schema={"modality": ds.modality, "features": ref.features, "targets": ref.targets},
            profile={"counts": ref.counts})
        try:
            log_data_statistics(ctx, res.stats)
        except Exception as exc:  # statistics are a report, not the product: never fail the data step for a plot
            log.warning("could not log data statistics: %s", exc)
        return {"dataset": ref.to_dict()}
