"""Config of the ``register`` step: log the model to MLflow, register a version, move aliases behind a gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aimass.spec.base import StrictModel
from aimass.spec.configs.base import StepConfig

__all__ = ["RegisterConfig", "GateConfig", "Threshold"]


class Threshold(StrictModel):
    metric: str = Field(description="Metric from the evaluate step, e.g. f1_macro, accuracy, roc_auc_ovr.")
    min: float | None = Field(None, description="Pass only if metric >= min.")
    max: float | None = Field(None, description="Pass only if metric <= max.")

    def check(self, value: float | None, missing: str = "not measured") -> tuple[bool, str]:
        """Whether ``value`` passes, and one line saying why (the gate's reasons)."""
        if value is None:
            return False, f"{self.metric}: {missing}"
        if self.min is not None and value < self.min:
            return False, f"{self.metric}={value:.4f} < min {self.min}"
        if self.max is not None and value > self.max:
            return False, f"{self.metric}={value:.4f} > max {self.max}"
        return True, f"{self.metric}={value:.4f} passes"


class GateConfig(StrictModel):
    thresholds: list[Threshold] = Field(default_factory=list, description="Absolute thresholds; all must pass.")
    compare_metric: str | None = Field("accuracy", description="Metric compared against the current champion (None: no comparison).")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher compareMetric is better.")
    min_improvement: float = Field(0.0, description="The challenger must beat the champion by at least this much (>= when 0).")
    max_latency_ms: float | None = Field(None, gt=0, description="Candidates only: p50 latency at batch 1 must be <= this (ms).")
    max_size_mb: float | None = Field(None, gt=0, description="Candidates only: size on disk must be <= this (MB).")
    max_metric_drop: float | None = Field(None, ge=0, description="Candidates only: the metric (selectMetric) may drop at most this much vs the uncompressed original.")
    select: Literal["best-under-constraints", "best-metric"] = Field(
        "best-under-constraints", description="Candidates only: which passing candidate is registered.")
    prefer: Literal["size", "latency"] = Field("size", description="Candidates only, with best-under-constraints: smallest or fastest.")
    select_metric: str = Field("accuracy", description="Candidates only: the metric maxMetricDrop and best-metric read.")


class RegisterConfig(StepConfig):
    """Registers the model as ``challenger``; moves ``champion`` only when the gate passes.

    With ``candidates`` from a compress step, the gate first picks one candidate (absolute thresholds,
    ``maxLatencyMs``, ``maxSizeMb``, ``maxMetricDrop`` vs the uncompressed original) and registers that one;
    when none passes it registers nothing and fails with every candidate's numbers.
    """

    INPUTS = {"model": True, "metrics": False, "candidates": False}
    OUTPUTS = ("model_uri", "model_version")

    model_name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Registered model name.")
    weights_format: Literal["safetensors", "state_dict"] = Field("safetensors", description="How weights are stored (never a pickled object).")
    challenger_alias: str = Field("challenger", pattern=r"^[a-z][a-z0-9_-]*$", description="Alias set on every new version.")
    champion_alias: str = Field("champion", pattern=r"^[a-z][a-z0-9_-]*$", description="Alias moved when the gate passes.")
    gate: GateConfig = Field(default_factory=GateConfig, description="When the new version becomes champion.")
    description: str | None = Field(None, max_length=5000, description="Model version description.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra model-version tags.")
