"""Where rows come from: built-in data sets, a seeded generator, local files and S3 objects."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from aimass.exceptions import InvalidRequestError, SpecError, StorageError

__all__ = ["RawData", "load_source"]

RawData = tuple[np.ndarray, np.ndarray, list[str]]  # features, labels (as ints), class names


def _encode_labels(y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    classes, codes = np.unique(y, return_inverse=True)
    return codes.astype(np.int64), [str(c) for c in classes]


def _builtin(name: str) -> RawData:
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "iris": datasets.load_iris, "breast_cancer": datasets.load_breast_cancer,
              "wine": datasets.load_wine}[name]
    b = loader()
    names = [str(n) for n in getattr(b, "target_names", np.unique(b.target))]
    return b.data.astype(np.float32), b.target.astype(np.int64), names


def _synthetic(cfg, seed: int) -> RawData:
    from sklearn.datasets import make_classification

    informative = cfg.num_informative or max(2, cfg.num_features // 2)
    informative = min(informative, cfg.num_features)
    x, y = make_classification(
        n_samples=cfg.num_samples, n_features=cfg.num_features, n_informative=informative,
        n_redundant=min(cfg.num_features - informative, max(0, cfg.num_features // 4)), n_classes=cfg.num_classes,
        n_clusters_per_class=1, class_sep=cfg.class_sep, random_state=seed,
    )
    rng = np.random.default_rng(seed)
    x = x.astype(np.float32)
    if cfg.missing_fraction:
        mask = rng.random(x.shape) < cfg.missing_fraction
        x[mask] = np.nan
    if cfg.duplicate_fraction:  # exact copies of rows, missing values included
        idx = rng.choice(len(x), int(len(x) * cfg.duplicate_fraction), replace=False)
        x, y = np.concatenate([x, x[idx]]), np.concatenate([y, y[idx]])
    return x, y.astype(np.int64), [str(i) for i in range(cfg.num_classes)]


def _table(path: Path, fmt: str, label: str) -> RawData:
    import pandas as pd

    df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    if label not in df.columns:
        raise SpecError(f"label column {label!r} not found in {path.name}", got=list(df.columns)[:20],
                        fix="Set labelColumn to the column holding the class.")
    y, names = _encode_labels(df[label].to_numpy())
    feats = df.drop(columns=[label])
    non_numeric = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c].dtype)]
    if non_numeric:
        raise SpecError(f"non-numeric feature columns in {path.name}", got=non_numeric[:10],
                        fix="Set modality: table (categorical columns are then encoded for you), or drop them.")
    return feats.to_numpy(dtype=np.float32), y, names


def _npz(path: Path) -> RawData:
    try:
        return _npz_arrays(path)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise SpecError(f"{path.name} holds pickled Python objects, which are never loaded", got=str(exc)[:120],
                            fix="Save labels as numbers or fixed-width strings (np.savez(f, x=x, y=y.astype(str))).") from None
        raise


def _npz_arrays(path: Path) -> RawData:
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z or "y" not in z:
            raise SpecError(f"{path.name} must hold arrays 'x' and 'y'", got=list(z.keys()), fix="Save with np.savez(f, x=..., y=...).")
        x = z["x"].astype(np.float32)
        y, names = _encode_labels(z["y"])
        if "class_names" in z:
            names = [str(c) for c in z["class_names"]]
    return x, y, names


def _format(source: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = source.lower().rsplit(".", 1)[-1]
    if suffix in ("csv", "parquet", "npz"):
        return suffix
    if suffix in ("pq",):
        return "parquet"
    raise SpecError("cannot tell the file format from the extension", got=source, fix="Set format: csv, parquet or npz.")


def load_source(cfg, seed: int, endpoint_url: str | None = None) -> RawData:
    """Read the rows named by a :class:`~aimass.spec.configs.data.DataConfig`."""
    src = cfg.source
    if src.startswith("builtin:"):
        return _builtin(src.split(":", 1)[1])
    if src == "synthetic":
        return _synthetic(cfg.synthetic, seed)
    fmt = _format(src, cfg.format)
    if src.startswith("s3://"):
        from aimass.storage import get_store

        bucket_key = src[len("s3://"):]
        bucket, _, key = bucket_key.partition("/")
        if not key:
            raise SpecError("S3 source needs a key", got=src, fix="Use s3://bucket/path/to/file.csv.")
        store = get_store(f"s3://{bucket}", endpoint_url=endpoint_url)
        local = Path(tempfile.mkdtemp(prefix="aimass-src-")) / Path(key).name
        try:
            store.get_file(key, local)
        except StorageError:
            raise
        path = local
    elif "://" in src and not src.startswith("file://"):
        raise InvalidRequestError("unsupported data source scheme", got=src, fix="Use builtin:NAME, synthetic, a local path or s3://.")
    else:
        path = Path(src.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise SpecError("data file not found", got=str(path), fix="Check the path (relative to where aimass runs).")
    if fmt == "npz":
        return _npz(path)
    return _table(path, fmt, cfg.label_column)
