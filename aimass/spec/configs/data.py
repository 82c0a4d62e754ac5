"""Config of the ``data`` step: load, clean, normalise, split and augment tensors, tables, images or text.

``modality`` chooses the reader: ``tensor`` (today's numeric arrays: builtin, synthetic, npz, numeric CSV/Parquet),
``table`` (CSV/Parquet with numeric, categorical and missing values), ``image`` (a class-per-subdirectory folder,
or a CSV/Parquet manifest of path + label columns) or ``text`` (CSV, JSONL or Parquet with a text column).
``targets`` declares one or more named targets (classification, multilabel, regression); without it the
single target is the classification column ``labelColumn``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from aimass.spec.base import StrictModel
from aimass.spec.configs.base import StepConfig

__all__ = [
    "AugmentConfig",
    "CleanConfig",
    "DataConfig",
    "ImageConfig",
    "SplitConfig",
    "SyntheticConfig",
    "TableConfig",
    "TargetConfig",
    "TextConfig",
]


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
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split shares must add up to 1.0, got {total:g} (train {self.train:g} + val {self.val:g} + test {self.test:g})")
        return self


class AugmentConfig(StrictModel):
    noise_std: float = Field(0.0, ge=0, le=10, description="Gaussian noise added to copies of training rows (after normalisation).")
    copies: int = Field(0, ge=0, le=20, description="Augmented copies of each training row.")
    max_shift: int = Field(0, ge=0, le=8, description="Random pixel shift for image data (needs imageShape).")


class TargetConfig(StrictModel):
    """One named target. ``columns`` default to ``[name]``."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
                      description="Target name (the model's head name).")
    kind: Literal["classification", "multilabel", "regression"] = Field(
        "classification", description="classification: one class per row; multilabel: several 0/1 labels; regression: numbers.")
    columns: list[str] | None = Field(None, min_length=1, max_length=1000,
                                      description="Source columns (default [name]). multilabel: one 0/1 column per label, "
                                                  "or one column of labels joined by `separator`; regression: one column per output.")
    separator: str | None = Field(None, min_length=1, max_length=4,
                                  description="multilabel from one column: the separator between labels (e.g. '|').")
    loss_weight: float = Field(1.0, gt=0, le=1000, description="Weight of this target's loss in a multi-task model.")

    @property
    def source_columns(self) -> list[str]:
        return list(self.columns or [self.name])

    @model_validator(mode="after")
    def _check(self) -> TargetConfig:
        if self.separator is not None and self.kind != "multilabel":
            raise ValueError(f"`separator` is only for multilabel targets, got kind {self.kind!r}")
        if self.separator is not None and len(self.source_columns) != 1:
            raise ValueError("multilabel with `separator` reads one column; give exactly one in `columns`")
        if self.kind == "classification" and len(self.source_columns) != 1:
            raise ValueError(f"classification target {self.name!r} reads one column, got {len(self.source_columns)}")
        return self


class ImageConfig(StrictModel):
    """How images are read and decoded (Pillow; PNG and JPEG)."""

    size: list[int] = Field([32, 32], min_length=2, max_length=2, description="Decoded size [height, width] in pixels.")
    channels: Literal[1, 3] = Field(3, description="1 (grayscale) or 3 (RGB).")
    resize: Literal["resize", "center_crop", "pad"] = Field(
        "resize", description="resize: stretch; center_crop: scale the short side, crop the centre; pad: fit inside, pad black.")
    path_column: str = Field("path", description="Manifest source: the column with image paths (relative to the manifest).")
    on_error: Literal["error", "skip"] = Field("error", description="An unreadable image: fail (naming the file) or skip it and count it.")
    max_images: int | None = Field(None, ge=1, le=10_000_000, description="Read at most this many images (seeded sample).")

    @model_validator(mode="after")
    def _check(self) -> ImageConfig:
        if any(v < 1 or v > 4096 for v in self.size):
            raise ValueError(f"image size must be within 1..4096 pixels per side, got {self.size}")
        return self


class TextConfig(StrictModel):
    """How text is read (CSV, JSONL or Parquet)."""

    text_column: str = Field("text", description="The column holding the text.")
    max_chars: int = Field(10_000, ge=1, le=1_000_000,
                           description="Longest text accepted, in characters (texts are stored fixed-width: rows x longest text).")
    on_error: Literal["error", "skip"] = Field("error", description="A row with empty or too long text: fail (naming the row) or skip it and count it.")


class TableConfig(StrictModel):
    """Column types of a table. Types are inferred (numbers -> numeric, anything else -> categorical) unless given."""

    columns: dict[str, Literal["numeric", "categorical", "ignore"]] = Field(
        default_factory=dict, description="Override the inferred type of a column, or ignore it.")
    max_categories: int = Field(1000, ge=1, le=1_000_000, description="Keep this many most frequent values per categorical column.")


class DataConfig(StepConfig):
    """Where data comes from and how it is prepared. Produces ``dataset``."""

    OUTPUTS = ("dataset",)

    source: str = Field(
        description="builtin:digits | builtin:iris | builtin:breast_cancer | synthetic | a local .csv/.parquet/.npz path | s3://bucket/key",
        min_length=1,
        max_length=2048,
    )
    format: Literal["auto", "csv", "parquet", "npz", "jsonl", "folder"] = Field(
        "auto", description="File format; from the extension when auto (a directory or a path ending in '/' is a folder).")
    modality: Literal["tensor", "table", "image", "text"] = Field(
        "tensor", description="tensor: numeric arrays (as before); table: numeric+categorical columns; image: image folder or "
                              "manifest; text: a text column.")
    label_column: str = Field("label", description="Label column for CSV/Parquet (and image manifests); key 'y' for NPZ.")
    targets: list[TargetConfig] | None = Field(None, min_length=1, max_length=32,
                                               description="Named targets (the first is the primary one). Default: one "
                                                           "classification target read from labelColumn.")
    image: ImageConfig | None = Field(None, description="Image settings (modality image).")
    text: TextConfig | None = Field(None, description="Text settings (modality text).")
    table: TableConfig | None = Field(None, description="Column types (modality table).")
    synthetic: SyntheticConfig | None = Field(None, description="Generator settings when source is 'synthetic'.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    normalize: Literal["standard", "minmax", "none"] = Field("standard", description="Feature scaling, fitted on the training split only.")
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    image_shape: list[int] | None = Field(None, min_length=2, max_length=3, description="Reshape rows to [C,H,W] (or [H,W]) for image models.")
    max_rows: int | None = Field(None, ge=10, description="Keep at most this many rows (seeded sample).")

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "synthetic" and self.synthetic is None:
            self.synthetic = SyntheticConfig()
        if self.synthetic is not None and self.source != "synthetic":
            raise ValueError("`synthetic` settings given but source is not 'synthetic'")
        if self.source.startswith("builtin:") and self.source.split(":", 1)[1] not in BUILTIN_SOURCES:
            raise ValueError(f"unknown builtin data set {self.source!r}; known: {', '.join('builtin:' + b for b in BUILTIN_SOURCES)}")
        if self.augment.max_shift and not self.image_shape:
            raise ValueError("augment.maxShift needs imageShape")
        for name, block in (("image", self.image), ("text", self.text), ("table", self.table)):
            if block is not None and self.modality != name:
                raise ValueError(f"`{name}` settings given but modality is {self.modality!r}; set modality: {name}")
        if self.modality == "image" and self.image is None:
            self.image = ImageConfig()
        if self.modality == "text" and self.text is None:
            self.text = TextConfig()
        if self.modality == "table" and self.table is None:
            self.table = TableConfig()
        if self.modality != "tensor":
            if self.source == "synthetic" or self.source.startswith("builtin:"):
                raise ValueError(f"modality {self.modality!r} reads files; source {self.source!r} is for modality tensor")
            if self.format == "npz":
                raise ValueError(f"format npz is for modality tensor, got modality {self.modality!r}")
            if self.image_shape or self.augment.copies:
                raise ValueError("imageShape and augment are for modality tensor (image data uses `image.size`; "
                                 "augmentation of images, tables and text is not done by the data step)")
        if self.modality == "tensor" and self.format in ("jsonl", "folder"):
            raise ValueError(f"format {self.format} is not read by modality tensor; set modality: "
                             f"{'image' if self.format == 'folder' else 'text or table'}")
        if self.format == "folder" and self.modality != "image":
            raise ValueError("format folder (class-per-subdirectory) needs modality: image")
        if self.targets is not None:
            names = [t.name for t in self.targets]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"target names must be unique, got {dup} more than once")
            if self.modality == "tensor" and (len(self.targets) > 1 or self.targets[0].kind != "classification"):
                raise ValueError("modality tensor has a single classification target; use modality table for "
                                 "regression, multilabel or several targets")
            if self.modality == "image" and self.format == "folder" and (len(self.targets) > 1 or self.targets[0].kind != "classification"):
                raise ValueError("an image folder gives one classification target (its subdirectories); use a manifest "
                                 "(CSV/Parquet of path + label columns) for other targets")
        return self

    def target_configs(self) -> list[TargetConfig]:
        """The declared targets, or the default single classification target on ``labelColumn``."""
        return list(self.targets) if self.targets else [TargetConfig(name="label", columns=[self.label_column])]


BUILTIN_SOURCES = ("digits", "iris", "breast_cancer", "wine")
