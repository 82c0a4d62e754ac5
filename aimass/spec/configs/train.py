"""Config of the ``train`` step: distributed training with Ray Train's TorchTrainer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from aimass.spec.base import StrictModel
from aimass.spec.configs.base import StepConfig

__all__ = ["IMAGE_MODELS", "EarlyStoppingConfig", "InitConfig", "LoraConfig", "OptimizerConfig", "ParamGroupConfig", "ScheduleConfig",
           "TrainConfig", "check_model_fits_data"]


class OptimizerConfig(StrictModel):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (sgd only).")


class ScheduleConfig(StrictModel):
    name: Literal["none", "cosine", "step", "onecycle"] = Field("none", description="Learning-rate schedule.")
    step_size: int = Field(10, ge=1, description="Epochs between decays (step).")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor (step).")
    warmup_epochs: int = Field(0, ge=0, le=1000, description="Linear warm-up epochs (cosine).")


class EarlyStoppingConfig(StrictModel):
    metric: str = Field("val_loss", description="Metric watched: val_loss or val_accuracy.")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    patience: int = Field(3, ge=1, le=1000, description="Epochs without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"],
                                      description="Names of the linear layers that get adapters (bert: query, key, value, dense).")
    merge: bool = Field(True, description="Register the model with the adapters merged into the weights (false: keep them as adapters).")


class ParamGroupConfig(StrictModel):
    pattern: str = Field(..., min_length=1, description="Parameter-name glob (or re:REGEX); the first matching group wins.")
    lr: float = Field(..., gt=0, le=10, description="Learning rate of the parameters that match.")


class InitConfig(StrictModel):
    """Where the weights start, and what trains. Fine-tuning the champion (``from: models:/NAME@champion``) is how
    a model is updated; the register step's gate decides whether the result replaces it."""

    from_: str = Field(..., alias="from", min_length=1, max_length=2000,
                       description="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model, a local directory, s3://bucket/prefix, or a hub id.")
    freeze: list[str] = Field(default_factory=list, description="Parameter-name globs (or re:REGEX) to freeze; the head always trains.")
    train_last_blocks: int | None = Field(None, ge=0, le=10_000, description="Freeze everything but the last N blocks (and the head).")
    param_groups: list[ParamGroupConfig] = Field(default_factory=list, description="Learning rates per parameter group.")
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters (peft) instead of the full weights (transformer models).")


class TrainConfig(StepConfig):
    """Model, data-parallel scaling, optimisation and fault tolerance. Produces ``model``."""

    INPUTS = {"dataset": True, "best_config": False}
    OUTPUTS = ("model", "train_metrics")

    model: str = Field("mlp", description="Model zoo name: mlp, cnn, resnet, vit, tab-mlp, text-transformer (see `aimass models list`).")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Arguments of the model builder, e.g. {hidden: [128, 64]}.")
    num_workers: int = Field(1, ge=1, le=1024, description="Training processes (one per GPU when useGpu).")
    use_gpu: bool = Field(False, description="Train on GPUs (one per worker).")
    cpus_per_worker: float = Field(1.0, gt=0, le=256, description="CPU cores per worker.")
    epochs: int = Field(10, ge=1, le=100_000, description="Passes over the training data.")
    batch_size: int = Field(64, ge=1, le=1_000_000, description="Batch size per worker.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="Mixed precision on GPU (auto = bf16 where supported); off on CPU.")
    early_stopping: EarlyStoppingConfig | None = Field(None, description="Stop when the metric stops improving.")
    max_failures: int = Field(2, ge=0, le=100, description="Worker-group restarts from the last checkpoint before the step fails.")
    checkpoints_to_keep: int = Field(2, ge=1, le=100, description="Newest checkpoints kept.")
    train_on: Literal["train", "train+val"] = Field("train", description="Data to fit on; train+val retrains on both (e.g. after tuning).")
    seed: int | None = Field(None, ge=0, description="Overrides the pipeline seed for this step.")
    init: InitConfig | None = Field(None, description="Start from pretrained or registered weights (transfer learning, LoRA).")

    @model_validator(mode="after")
    def _checks(self) -> TrainConfig:
        if self.early_stopping and self.early_stopping.metric not in ("val_loss", "val_accuracy", "train_loss"):
            raise ValueError(f"earlyStopping.metric must be val_loss, val_accuracy or train_loss, got {self.early_stopping.metric!r}")
        if self.early_stopping and self.train_on == "train+val" and self.early_stopping.metric.startswith("val_"):
            raise ValueError("earlyStopping on a val_ metric needs trainOn: train (validation data is used for fitting)")
        return self

    def check_in_pipeline(self, step, pipeline):
        return check_model_fits_data(self.model, ("config", "model"), step, pipeline)


# Zoo models that take [C,H,W] (or [H,W]) images, so their data step must say how to reshape rows.
IMAGE_MODELS = frozenset({"cnn"})


def check_model_fits_data(model: str, field: tuple, step: Any, pipeline: Any) -> list[tuple[str, str, tuple | None]]:
    """Cross-checks of a model name in a train (or tune) step: it exists, and the data feeding it fits.

    An image model whose ``dataset`` comes from a ``data`` step without ``imageShape`` would fail only
    when the model is built on a worker; here it fails at validation, pointing at the data step.
    """
    from aimass.models.registry import model_names

    if model not in model_names():
        return [(f"unknown model {model!r}", f"Known models: {', '.join(model_names())}.", field)]
    if model in IMAGE_MODELS:
        from aimass.spec.configs.data import DataConfig
        from aimass.spec.wiring import WiringError, resolve_inputs

        try:
            up_name, _ = resolve_inputs(step, pipeline).get("dataset", (None, None))
        except (WiringError, KeyError):
            return []  # reported by the wiring check
        data_cfg = pipeline.step(up_name).parsed_config if up_name else None
        if isinstance(data_cfg, DataConfig) and not data_cfg.image_shape and data_cfg.modality != "image":
            return [(f"model {model!r} takes images, but its data step {up_name!r} has no imageShape",
                     f"Set imageShape on step {up_name!r} (e.g. imageShape: [1, 8, 8] for builtin:digits), "
                     "or use a model over flat features (mlp, logreg).", field)]
    return []
