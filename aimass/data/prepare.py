"""Clean, split, fit normalisation and augment: raw rows in, a :class:`Dataset` out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aimass.data.dataset import Dataset
from aimass.data.splits import split_indices
from aimass.exceptions import SpecError, StepError

__all__ = ["PrepareReport", "prepare"]


@dataclass
class PrepareReport:
    rows_in: int = 0
    rows_missing_dropped: int = 0
    values_imputed: int = 0
    duplicates_dropped: int = 0
    augmented_rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    # source row ids (0-based, before cleaning) of each split: the split manifest
    split_ids: dict[str, list[int]] = field(default_factory=dict)


def _clean(x: np.ndarray, y: np.ndarray, ids: np.ndarray, cfg, rep: PrepareReport):
    nan = np.isnan(x)
    if nan.any():
        if cfg.missing == "error":
            raise SpecError("the data has missing values", got=int(nan.sum()), fix="Set clean.missing to drop, mean, median or zero.")
        if cfg.missing == "drop":
            keep = ~nan.any(axis=1)
            rep.rows_missing_dropped = int((~keep).sum())
            x, y, ids = x[keep], y[keep], ids[keep]
        else:
            rep.values_imputed = int(nan.sum())
            if cfg.missing == "zero":
                fill = np.zeros(x.shape[1], dtype=x.dtype)
            else:
                with np.errstate(all="ignore"):
                    fill = np.nanmean(x, axis=0) if cfg.missing == "mean" else np.nanmedian(x, axis=0)
                fill = np.nan_to_num(fill)
            x = np.where(np.isnan(x), fill[None, :], x)
    if cfg.drop_duplicates:
        rows = np.concatenate([x, y[:, None].astype(x.dtype)], axis=1)
        _, first = np.unique(rows, axis=0, return_index=True)
        first.sort()
        rep.duplicates_dropped = len(x) - len(first)
        x, y, ids = x[first], y[first], ids[first]
    return x, y, ids


def _augment(x, y, cfg, scale, image_shape, seed):
    if not cfg.copies:
        return x, y
    rng = np.random.default_rng(seed + 1)
    xs, ys = [x], [y]
    for _ in range(cfg.copies):
        a = x.copy()
        if cfg.max_shift and image_shape:
            imgs = a.reshape(len(a), *image_shape)
            dy, dx = rng.integers(-cfg.max_shift, cfg.max_shift + 1, size=2)
            imgs = np.roll(imgs, shift=(int(dy), int(dx)), axis=(-2, -1))
            a = imgs.reshape(len(a), *x.shape[1:])
        if cfg.noise_std:
            a = a + rng.normal(0, cfg.noise_std, size=a.shape).astype(a.dtype) * scale.reshape(1, *x.shape[1:])
        xs.append(a)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def prepare(x: np.ndarray, y: np.ndarray, class_names: list[str], cfg, seed: int) -> tuple[Dataset, PrepareReport]:
    """Turn raw rows into train/val/test arrays. Normalisation statistics come from the training split only."""
    rep = PrepareReport(rows_in=len(x))
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    ids = np.arange(len(x))
    if cfg.max_rows and len(x) > cfg.max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(x), cfg.max_rows, replace=False))
        x, y, ids = x[idx], y[idx], ids[idx]
    x, y, ids = _clean(x, y, ids, cfg.clean, rep)
    if len(np.unique(y)) < 2:
        raise StepError("the data has fewer than 2 classes after cleaning", got=len(np.unique(y)),
                        fix="Check the label column and the cleaning settings.")
    if len(x) < 10:
        raise StepError("fewer than 10 rows left after cleaning", got=len(x), fix="Use more data or clean.missing: mean.")
    i_tr, i_val, i_te = split_indices(len(y), cfg.split, seed, strat=y, class_names=list(class_names))
    x_tr, y_tr, x_val, y_val, x_te, y_te = x[i_tr], y[i_tr], x[i_val], y[i_val], x[i_te], y[i_te]
    rep.split_ids = {"train": sorted(int(i) for i in ids[i_tr]), "val": sorted(int(i) for i in ids[i_val]),
                     "test": sorted(int(i) for i in ids[i_te])}
    if cfg.normalize == "standard":
        mean, scale = x_tr.mean(axis=0), x_tr.std(axis=0)
    elif cfg.normalize == "minmax":
        mean, scale = x_tr.min(axis=0), x_tr.max(axis=0) - x_tr.min(axis=0)
    else:
        mean, scale = np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
    scale = np.where(scale < 1e-8, 1.0, scale).astype(np.float32)
    mean = mean.astype(np.float32)
    shape = tuple(cfg.image_shape) if cfg.image_shape else None
    if shape:
        if int(np.prod(shape)) != x.shape[1]:
            raise SpecError(f"imageShape {list(shape)} does not match {x.shape[1]} features per row",
                            fix="Use a shape whose product is the number of features.")
    n_before = len(x_tr)
    x_tr, y_tr = _augment(x_tr, y_tr, cfg.augment, scale, shape, seed)
    rep.augmented_rows = len(x_tr) - n_before
    if shape:
        x_tr, x_val, x_te = (a.reshape(len(a), *shape) for a in (x_tr, x_val, x_te))
        mean, scale = mean.reshape(shape), scale.reshape(shape)
    rng = np.random.default_rng(seed + 2)
    perm = rng.permutation(len(x_tr))
    ds = Dataset(x_tr[perm], y_tr[perm], x_val, y_val, x_te, y_te, list(class_names), mean, scale)
    rep.counts = {"train": len(ds.y_train), "val": len(ds.y_val), "test": len(ds.y_test)}
    return ds, rep
