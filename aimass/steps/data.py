"""The ``data`` step."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from aimass.data import load_source, prepare, save_dataset
from aimass.steps.base import Step, StepContext

__all__ = ["DataStep"]


class DataStep(Step):
    type_name = "data"
    code_modules = ("aimass.data.prepare", "aimass.data.sources", "aimass.data.dataset")

    def run(self, ctx: StepContext, config) -> dict:
        x, y, names = load_source(config, ctx.seed, endpoint_url=ctx.settings.get("s3_endpoint_url"))
        ds, rep = prepare(x, y, names, config, ctx.seed)
        ref = save_dataset(ds, ctx.store, ctx.key("dataset.npz"))
        ctx.log_params({"source": config.source, "normalize": config.normalize, "split": config.split.dump(),
                        "input_shape": ds.input_shape, "num_classes": ds.num_classes})
        metrics = {k: v for k, v in asdict(rep).items() if isinstance(v, (int, float))}
        metrics.update({f"rows_{k}": v for k, v in rep.counts.items()})
        for i, c in enumerate(np.bincount(ds.y_train, minlength=ds.num_classes)):
            metrics[f"class_share_train_{i}"] = float(c) / max(1, len(ds.y_train))
        ctx.log_metrics(metrics)
        return {"dataset": ref.to_dict()}
