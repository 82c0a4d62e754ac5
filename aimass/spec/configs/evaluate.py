"""Config of the ``evaluate`` step: metrics and plots on a held-out split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aimass.spec.configs.base import StepConfig

__all__ = ["EvaluateConfig"]


class EvaluateConfig(StepConfig):
    """Accuracy, precision, recall, F1 (macro and weighted), ROC-AUC one-vs-rest, per-class report and plots."""

    INPUTS = {"dataset": True, "model": True}
    OUTPUTS = ("metrics", "report")

    split: Literal["test", "val"] = Field("test", description="Which split to evaluate on.")
    batch_size: int = Field(1024, ge=1, le=1_000_000, description="Inference batch size.")
    plots: bool = Field(True, description="Log confusion-matrix, ROC and learning-curve plots to MLflow.")
