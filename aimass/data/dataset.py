"""The prepared data set and its JSON reference."""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Dataset", "DatasetRef", "save_dataset", "open_dataset"]


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    feature_mean: np.ndarray
    feature_scale: np.ndarray

    @property
    def input_shape(self) -> list[int]:
        return list(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "train+val":
            return np.concatenate([self.x_train, self.x_val]), np.concatenate([self.y_train, self.y_val])
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@dataclass
class DatasetRef:
    """What travels between steps: where the arrays are and what they look like."""

    key: str
    root: str
    sha256: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetRef":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def save_dataset(ds: Dataset, store, key: str) -> DatasetRef:
    buf = io.BytesIO()
    np.savez_compressed(
        buf, x_train=ds.x_train, y_train=ds.y_train, x_val=ds.x_val, y_val=ds.y_val, x_test=ds.x_test, y_test=ds.y_test,
        class_names=np.array(ds.class_names), feature_mean=ds.feature_mean, feature_scale=ds.feature_scale,
    )
    data = buf.getvalue()
    store.put_bytes(key, data)
    return DatasetRef(key=key, root=store.root_uri, sha256=hashlib.sha256(data).hexdigest(), input_shape=ds.input_shape,
                      num_classes=ds.num_classes, class_names=list(ds.class_names),
                      counts={"train": len(ds.y_train), "val": len(ds.y_val), "test": len(ds.y_test)})


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
        return Dataset(
            x_train=z["x_train"], y_train=z["y_train"], x_val=z["x_val"], y_val=z["y_val"], x_test=z["x_test"], y_test=z["y_test"],
            class_names=[str(c) for c in z["class_names"]], feature_mean=z["feature_mean"], feature_scale=z["feature_scale"],
        )
