"""Config of the ``data`` step: load, clean, normalise, split and augment a tabular/image data set."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aimass.spec.base import StrictModel
from aimass.spec.configs.base import StepConfig

__all__ = ["DataConfig", "SyntheticConfig", "CleanConfig", "SplitConfig", "AugmentConfig"]


class SyntheticConfig(StrictModel):
    num_samples: int = Field(2000, ge=10, le=10_000_000, description="Rows to generate.")
    num_features: int = Field(20, ge=1, le=100_000, description="Features per row.")
    num_classes: int = Field(3, ge=2, le=10_000, description="Distinct labels.")
    num_informative: int | None = Field(None, ge=1, description="Informative features (default: half).")
    class_sep: float = Field(1.0, gt=0, le=100, description="How separable the classes are.")
    missing_fraction: float = Field(0.0, ge=0, lt=1, description="Fraction of values set to NaN (to exercise cleaning).")
    duplicate_fraction: float = Field(0.0, ge=0, lt=1, description="Fraction of rows duplicated.")


class CleanConfig(StrictModel):
    missing: Literal["drop", "mean", "median", "zero", "error"] = Field("mean", description="What to do with NaN values.")
    drop_duplicates: bool = Field(True, description="Remove exact duplicate rows (features and label).")


class SplitConfig(StrictModel):
    train: float = Field(0.7, gt=0, lt=1, description="Share of rows for training.")
    val: float = Field(0.2, ge=0, lt=1, description="Share of rows for validation.")
    test: float = Field(0.1, ge=0, lt=1, description="Share of rows for the final test.")
    stratify: bool = Field(True, description="Keep class proportions in every split.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split shares must add up to 1.0, got {total:g} (train {self.train:g} + val {self.val:g} + test {self.test:g})")
        return self


class AugmentConfig(StrictModel):
    noise_std: float = Field(0.0, ge=0, le=10, description="Gaussian noise added to copies of training rows (after normalisation).")
    copies: int = Field(0, ge=0, le=20, description="Augmented copies of each training row.")
    max_shift: int = Field(0, ge=0, le=8, description="Random pixel shift for image data (needs imageShape).")


class DataConfig(StepConfig):
    """Where data comes from and how it is prepared. Produces ``dataset``."""

    OUTPUTS = ("dataset",)

    source: str = Field(
        description="builtin:digits | builtin:iris | builtin:breast_cancer | synthetic | a local .csv/.parquet/.npz path | s3://bucket/key",
        min_length=1,
        max_length=2048,
    )
    format: Literal["auto", "csv", "parquet", "npz"] = Field("auto", description="File format; from the extension when auto.")
    label_column: str = Field("label", description="Label column for CSV/Parquet; key 'y' for NPZ.")
    synthetic: SyntheticConfig | None = Field(None, description="Generator settings when source is 'synthetic'.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    normalize: Literal["standard", "minmax", "none"] = Field("standard", description="Feature scaling, fitted on the training split only.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    image_shape: list[int] | None = Field(None, min_length=2, max_length=3, description="Reshape rows to [C,H,W] (or [H,W]) for image models.")
    max_rows: int | None = Field(None, ge=10, description="Keep at most this many rows (seeded sample).")

    @model_validator(mode="after")
    def _check_source(self) -> "DataConfig":
        if self.source == "synthetic" and self.synthetic is None:
            self.synthetic = SyntheticConfig()
        if self.synthetic is not None and self.source != "synthetic":
            raise ValueError("`synthetic` settings given but source is not 'synthetic'")
        if self.source.startswith("builtin:") and self.source.split(":", 1)[1] not in BUILTIN_SOURCES:
            raise ValueError(f"unknown builtin data set {self.source!r}; known: {', '.join('builtin:' + b for b in BUILTIN_SOURCES)}")
        if self.augment.max_shift and not self.image_shape:
            raise ValueError("augment.maxShift needs imageShape")
        return self


BUILTIN_SOURCES = ("digits", "iris", "breast_cancer", "wine")
