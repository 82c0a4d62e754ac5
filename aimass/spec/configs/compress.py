"""Configs of the ``compress`` and ``export`` steps: int8 quantization, pruning and ONNX export as candidates."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from aimass.spec.base import StrictModel
from aimass.spec.configs.base import StepConfig

__all__ = ["CompressConfig", "EnsembleConfig", "ExportConfig", "QuantizeMethod", "PruneMethod", "OnnxMethod", "ParityConfig", "MeasureConfig"]


class ParityConfig(StrictModel):
    max_abs_diff: float = Field(1e-4, gt=0, le=1, description="Largest allowed |probability difference| between torch and ONNX Runtime.")
    min_agreement: float = Field(0.999, ge=0, le=1, description="Smallest allowed share of rows where both predict the same class.")


class QuantizeMethod(StrictModel):
    """Post-training int8 quantization (dynamic: int8 weights, activations quantized per batch) on x86 CPUs."""

    type: Literal["quantize"]
    mode: Literal["dynamic"] = Field("dynamic", description="dynamic (Linear and transformer layers).")
    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Candidate name (default int8).")


class PruneMethod(StrictModel):
    """Magnitude pruning (unstructured weights, or structured output rows)."""

    type: Literal["prune"]
    amount: float = Field(0.5, gt=0, lt=1, description="Share of weights (or rows) set to zero in each layer.")
    structured: bool = Field(False, description="Prune whole output rows by L2 norm instead of single weights.")
    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Candidate name (default pruned-<amount>).")


class OnnxMethod(StrictModel):
    """ONNX export (dynamo exporter, TorchScript fallback) checked against torch on held-out rows."""

    type: Literal["onnx"]
    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.")
    parity: ParityConfig = Field(default_factory=ParityConfig, description="Thresholds of the parity check.")
    name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Candidate name (default onnx).")


Method = Annotated[QuantizeMethod | PruneMethod | OnnxMethod, Field(discriminator="type")]


class MeasureConfig(StrictModel):
    split: Literal["test", "val"] = Field("test", description="Rows every candidate is measured on.")
    latency_iterations: int = Field(200, ge=10, le=100_000, description="Batch-1 calls timed for p50/p95 latency.")
    throughput_batches: int = Field(30, ge=1, le=100_000, description="Batch-32 calls timed for throughput.")


class CompressConfig(StepConfig):
    """Turns one trained model into candidates (the original plus one per method), each measured on the same
    split and hardware: task metrics, size on disk, p50/p95 latency at batch 1, throughput at batch 32.
    Produces ``candidates`` (read by the register gate) and ``tradeoff`` (the report)."""

    INPUTS = {"dataset": True, "model": True}
    OUTPUTS = ("candidates", "tradeoff")

    methods: list[Method] = Field(min_length=1, max_length=20, description="Compression/export methods; each yields a candidate.")
    measure: MeasureConfig = Field(default_factory=MeasureConfig, description="How candidates are measured.")

    @model_validator(mode="after")
    def _unique_names(self) -> "CompressConfig":
        names = [candidate_name(m) for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1} | ({"original"} & set(names)))
        if dup:
            raise ValueError(f"candidate names must be unique and not 'original', got duplicates {dup}; set `name:` on the methods")
        return self


def candidate_name(method: QuantizeMethod | PruneMethod | OnnxMethod) -> str:
    """The candidate a method produces: its ``name``, or a default from its settings."""
    if method.name:
        return method.name
    if isinstance(method, QuantizeMethod):
        return "int8"
    if isinstance(method, PruneMethod):
        return f"pruned-{int(round(method.amount * 100))}{'-structured' if method.structured else ''}"
    return "onnx"


class ExportConfig(StepConfig):
    """Exports the model to ONNX and checks it against torch on held-out rows; the pipeline stops here when the
    check fails. Produces ``model`` (served on ONNX Runtime, same inference protocol) and ``export_report``."""

    INPUTS = {"dataset": True, "model": True}
    OUTPUTS = ("model", "export_report")

    format: Literal["onnx"] = Field("onnx", description="Export format.")
    opset: int = Field(18, ge=13, le=23, description="ONNX opset version.")
    split: Literal["test", "val"] = Field("test", description="Held-out rows of the parity check.")
    parity: ParityConfig = Field(default_factory=ParityConfig, description="Thresholds of the parity check.")


class EnsembleConfig(StepConfig):
    """Combines the models of every dependsOn step that produces a ``model`` (and registry models in ``members``)
    into one model, registered and served as one endpoint. Members must take the same input and predict the same
    classes. Produces ``model`` and ``ensemble_report`` (each member's and the ensemble's metrics on ``split``)."""

    INPUTS = {"dataset": True, "model": "many"}
    OUTPUTS = ("model", "ensemble_report")

    method: Literal["soft", "hard", "weighted", "stacking"] = Field(
        "soft", description="soft: mean probability; hard: vote share; weighted: weights fitted on val; stacking: logistic regression on val.")
    members: list[str] = Field(default_factory=list, max_length=20,
                               description="Registry models to add (models:/name/3 or models:/name@alias; pinned to the version found).")
    split: Literal["test", "val"] = Field("test", description="Split the report compares the members and the ensemble on.")

    @model_validator(mode="after")
    def _uris(self) -> "EnsembleConfig":
        bad = [m for m in self.members if not m.startswith("models:/")]
        if bad:
            raise ValueError(f"members must be registry URIs (models:/name/version or models:/name@alias), got {bad}")
        return self
