"""The prepared data set, its targets, and the JSON reference that travels between steps.

Array shapes per modality (see docs/data.md):

- ``tensor``: ``x`` float32 ``[N, *input_shape]``, raw; the model applies ``feature_mean``/``feature_scale``.
- ``table``: ``x`` float32 ``[N, F_num]`` numeric columns after imputation, raw; ``c`` int64 ``[N, F_cat]`` category
  codes (0 = missing/unseen).
- ``image``: ``x`` uint8 ``[N, C, H, W]``; the model divides by 255 and applies the per-channel mean/std.
- ``text``: ``x`` a numpy unicode array ``[N]``; tokenisation belongs to the model.

Targets: classification int64 ``[N]``; multilabel float32 ``[N, L]`` of 0/1; regression float32 ``[N, K]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MODALITIES", "TARGET_KINDS", "Dataset", "DatasetRef", "TargetSpec", "open_dataset", "save_dataset"]

TARGET_KINDS = ("classification", "multilabel", "regression")
MODALITIES = ("tensor", "table", "image", "text")
SPLITS = ("train", "val", "test")


@dataclass
class TargetSpec:
    """One named prediction target.

    Args:
        name: target name ("label" for the single default target).
        kind: "classification" | "multilabel" | "regression".
        class_names: classification: the classes; multilabel: the label names; regression: the output names.
        columns: the source columns the target was read from.
        loss_weight: weight of this target's loss in a multi-task model.

    Example:
        >>> TargetSpec("price", "regression", ["price"], columns=["price"]).num_outputs
        1
    """

    name: str
    kind: str
    class_names: list[str]
    columns: list[str] = field(default_factory=list)
    loss_weight: float = 1.0

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "class_names": list(self.class_names), "columns": list(self.columns),
                "loss_weight": float(self.loss_weight)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetSpec:
        return cls(name=str(d["name"]), kind=str(d["kind"]), class_names=[str(c) for c in d.get("class_names", [])],
                   columns=[str(c) for c in d.get("columns", [])], loss_weight=float(d.get("loss_weight", 1.0)))


@dataclass
class Dataset:
    """Train/val/test arrays of one prepared data set; ``y_*`` hold the first (primary) target."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    modality: str = "tensor"
    targets: list[TargetSpec] = field(default_factory=list)
    extra_y: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    c_train: np.ndarray | None = None
    c_val: np.ndarray | None = None
    c_test: np.ndarray | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.targets:
            self.targets = [TargetSpec("label", "classification", list(self.class_names))]

    @property
    def input_shape(self) -> list[int]:
        return list(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def primary(self) -> TargetSpec:
        return self.targets[0]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y of the primary target) for "train", "val", "test" or "train+val"."""
        if name == "train+val":
            return np.concatenate([self.x_train, self.x_val]), np.concatenate([self.y_train, self.y_val])
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def targets_split(self, name: str) -> dict[str, np.ndarray]:
        """Every target's array for one split, primary first."""
        if name == "train+val":
            a, b = self.targets_split("train"), self.targets_split("val")
            return {k: np.concatenate([a[k], b[k]]) for k in a}
        out = {self.targets[0].name: getattr(self, f"y_{name}")}
        for t in self.targets[1:]:
            out[t.name] = self.extra_y[t.name][name]
        return out

    def categorical(self, name: str) -> np.ndarray | None:
        """The int64 category codes of a split (table modality), or None."""
        if name == "train+val":
            a, b = self.c_train, self.c_val
            return None if a is None or b is None else np.concatenate([a, b])
        return getattr(self, f"c_{name}")


@dataclass
class DatasetRef:
    """What travels between steps: where the arrays are and what they look like.

    ``modality``, ``targets``, ``preprocess``, ``features``, ``digest`` (of the source data) and
    ``manifest_key`` (the split manifest: row or file ids per split) are absent from references written
    before they existed; :meth:`from_dict` fills defaults.
    """

    key: str
    root: str
    sha256: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    modality: str = "tensor"
    targets: list[dict[str, Any]] = field(default_factory=list)
    preprocess: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    manifest_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetRef:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _features(ds: Dataset) -> dict[str, Any]:
    pre = ds.preprocess
    out: dict[str, Any] = {"modality": ds.modality}
    if "numeric" in pre:
        out["numeric"] = list(pre["numeric"]["columns"])
    if "categorical" in pre:
        cat = pre["categorical"]
        out["categorical"] = {c: len(cat["vocab"][c]) + 1 for c in cat["columns"]}  # cardinality incl. the 0 code
    if "image" in pre:
        out["image"] = {"size": pre["image"]["size"], "channels": pre["image"]["channels"]}
    if "text" in pre:
        out["text"] = dict(pre["text"])
    return out


def save_dataset(ds: Dataset, store, key: str, *, digest: str = "", manifest_key: str = "") -> DatasetRef:
    """Write the arrays as one compressed ``.npz`` (no pickles) and return its reference."""
    arrays: dict[str, np.ndarray] = dict(
        x_train=ds.x_train, y_train=ds.y_train, x_val=ds.x_val, y_val=ds.y_val, x_test=ds.x_test, y_test=ds.y_test,
        class_names=np.array(ds.class_names, dtype=str), feature_mean=ds.feature_mean, feature_scale=ds.feature_scale,
        meta=np.array(json.dumps({"modality": ds.modality, "targets": [t.to_dict() for t in ds.targets],
                                  "preprocess": ds.preprocess})),
    )
    for t in ds.targets[1:]:
        for s in SPLITS:
            arrays[f"extra__{t.name}__{s}"] = ds.extra_y[t.name][s]
    for s in SPLITS:
        c = getattr(ds, f"c_{s}")
        if c is not None:
            arrays[f"c_{s}"] = c
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    store.put_bytes(key, data)
    return DatasetRef(key=key, root=store.root_uri, sha256=hashlib.sha256(data).hexdigest(), input_shape=ds.input_shape,
                      num_classes=ds.num_classes, class_names=list(ds.class_names),
                      counts={"train": len(ds.y_train), "val": len(ds.y_val), "test": len(ds.y_test)},
                      modality=ds.modality, targets=[t.to_dict() for t in ds.targets], preprocess=ds.preprocess,
                      features=_features(ds), digest=digest, manifest_key=manifest_key)


def open_dataset(ref: DatasetRef | dict, store=None, endpoint_url: str | None = None) -> Dataset:
    """Load the arrays behind a reference (local file directly, or downloaded from S3)."""
    if isinstance(ref, dict):
        ref = DatasetRef.from_dict(ref)
    if store is None:
        from aimass.storage import get_store

        store = get_store(ref.root, endpoint_url=endpoint_url)
    local = store.local_path(ref.key)
    if local is None:
        tmp = Path(tempfile.mkdtemp(prefix="aimass-ds-")) / "dataset.npz"
        local = store.get_file(ref.key, tmp)
    with np.load(local, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"])) if "meta" in z else {}
        targets = [TargetSpec.from_dict(t) for t in meta.get("targets", [])]
        extra = {t.name: {s: z[f"extra__{t.name}__{s}"] for s in SPLITS} for t in targets[1:]}
        return Dataset(
            x_train=z["x_train"], y_train=z["y_train"], x_val=z["x_val"], y_val=z["y_val"], x_test=z["x_test"], y_test=z["y_test"],
            class_names=[str(c) for c in z["class_names"]], feature_mean=z["feature_mean"], feature_scale=z["feature_scale"],
            modality=meta.get("modality", "tensor"), targets=targets, extra_y=extra,
            c_train=z.get("c_train"), c_val=z.get("c_val"), c_test=z.get("c_test"), preprocess=meta.get("preprocess", {}),
        )
