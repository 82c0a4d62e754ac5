"""Fitted preprocessing shared by the data step, training, evaluation and serving.

Everything here is fitted on the training split only and stored as a JSON-able dict (``Dataset.preprocess``),
so a served model applies exactly what training saw to the raw input a user sends:

- :func:`fit_numeric` / :func:`fit_categorical` and :func:`encode_table` / :func:`encode_table_rows` for table rows;
- :func:`decode_image` / :func:`decode_images` for PNG/JPEG bytes (Pillow's decompression-bomb limit kept);
- :func:`image_stats` for the per-channel normalisation of images.

Example:
    >>> pre = {"numeric": {"columns": ["age"], "mean": [40.0], "scale": [10.0], "fill": [40.0]},
    ...        "categorical": {"columns": ["city"], "vocab": {"city": ["Oslo", "Rome"]}}}
    >>> x, c = encode_table_rows(pre, [{"age": None, "city": "Rome"}])
    >>> x.tolist(), c.tolist()
    ([[40.0]], [[2]])
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np

from aimass.exceptions import InvalidRequestError

__all__ = [
    "RESIZE_POLICIES",
    "decode_image",
    "decode_images",
    "encode_table",
    "encode_table_rows",
    "fit_categorical",
    "fit_numeric",
    "image_stats",
]

RESIZE_POLICIES = ("resize", "center_crop", "pad")


# -- tables -----------------------------------------------------------------------------------------------------------
def fit_numeric(values: np.ndarray, columns: list[str], fill: str = "mean", normalize: str = "standard") -> dict[str, Any]:
    """Fill values, mean and scale of numeric columns, from the training rows ``values`` float ``[N, F]`` (NaN = missing)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), len(columns))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: filled with 0 below
        if fill == "median":
            f = np.nanmedian(values, axis=0) if len(values) else np.zeros(len(columns))
        elif fill == "zero":
            f = np.zeros(len(columns))
        else:
            f = np.nanmean(values, axis=0) if len(values) else np.zeros(len(columns))
    f = np.nan_to_num(f)
    filled = np.where(np.isnan(values), f[None, :], values)
    if normalize == "standard" and len(filled):
        mean, scale = filled.mean(axis=0), filled.std(axis=0)
    elif normalize == "minmax" and len(filled):
        mean, scale = filled.min(axis=0), filled.max(axis=0) - filled.min(axis=0)
    else:
        mean, scale = np.zeros(len(columns)), np.ones(len(columns))
    scale = np.where(scale < 1e-8, 1.0, scale)
    return {"columns": list(columns), "mean": [float(v) for v in mean], "scale": [float(v) for v in scale],
            "fill": [float(v) for v in f]}


def fit_categorical(frame, columns: list[str], max_categories: int = 1000) -> dict[str, Any]:
    """Vocabularies of categorical columns from the training rows: most frequent first (ties by value).

    Codes are ``index + 1``; 0 is kept for a missing value or a category unseen in training.
    """
    vocab: dict[str, list[str]] = {}
    for col in columns:
        s = frame[col].dropna().astype(str)
        counts = s.value_counts()
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        vocab[col] = [str(k) for k, _ in order[:max_categories]]
    return {"columns": list(columns), "vocab": vocab}


def _to_float(v: Any, row: int, col: str) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, str):
        if v.strip() == "":
            return math.nan
        try:
            return float(v)
        except ValueError:
            pass
    raise InvalidRequestError(f"row {row}: column {col!r} must be a number", got=v if isinstance(v, (str, int, float)) else type(v).__name__,
                              fix="Send a number, or null for a missing value.")


def encode_table(preprocess: dict[str, Any], frame) -> tuple[np.ndarray, np.ndarray]:
    """Encode a pandas DataFrame with the fitted ``preprocess``: (x float32 ``[N, F_num]``, c int64 ``[N, F_cat]``).

    Numeric columns get the training fill for missing values but stay unscaled (the model applies mean/scale).
    """
    import pandas as pd

    num = preprocess.get("numeric") or {"columns": [], "fill": []}
    cat = preprocess.get("categorical") or {"columns": [], "vocab": {}}
    n = len(frame)
    x = np.zeros((n, len(num["columns"])), dtype=np.float32)
    for j, (col, fill) in enumerate(zip(num["columns"], num["fill"], strict=True)):
        v = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        x[:, j] = np.where(np.isnan(v), fill, v)
    c = np.zeros((n, len(cat["columns"])), dtype=np.int64)
    for j, col in enumerate(cat["columns"]):
        index = {v: i + 1 for i, v in enumerate(cat["vocab"][col])}
        vals = frame[col]
        c[:, j] = [0 if (v is None or (isinstance(v, float) and math.isnan(v))) else index.get(str(v), 0) for v in vals]
    return x, c


def encode_table_rows(preprocess: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Encode raw rows (``[{"col": value, ...}, ...]``, as a user sends them) for a table model.

    A column left out of a row, or ``null``, counts as missing; an unseen category gets code 0; a column the
    model does not know, or a non-number in a numeric column, is refused with :class:`InvalidRequestError`.
    """
    num = preprocess.get("numeric") or {"columns": [], "fill": []}
    cat = preprocess.get("categorical") or {"columns": [], "vocab": {}}
    known = set(num["columns"]) | set(cat["columns"])
    if not isinstance(rows, list) or not rows:
        raise InvalidRequestError("expected a non-empty list of rows", got=type(rows).__name__, fix='Send [{"column": value, ...}].')
    x = np.zeros((len(rows), len(num["columns"])), dtype=np.float32)
    c = np.zeros((len(rows), len(cat["columns"])), dtype=np.int64)
    indexes = {col: {v: i + 1 for i, v in enumerate(cat["vocab"][col])} for col in cat["columns"]}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidRequestError(f"row {i} is not an object", got=type(row).__name__, fix='Send each row as {"column": value}.')
        unknown = sorted(set(row) - known)
        if unknown:
            raise InvalidRequestError(f"row {i} has columns the model does not know", got=unknown[:10],
                                      fix=f"Known columns: {', '.join(sorted(known))}.")
        for j, (col, fill) in enumerate(zip(num["columns"], num["fill"], strict=True)):
            v = _to_float(row.get(col), i, col)
            x[i, j] = fill if math.isnan(v) else v
        for j, col in enumerate(cat["columns"]):
            v = row.get(col)
            c[i, j] = 0 if v is None else indexes[col].get(str(v), 0)
    return x, c


# -- images -----------------------------------------------------------------------------------------------------------
def decode_image(blob: bytes, size: tuple[int, int] | list[int], channels: int = 3, resize: str = "resize",
                 name: str = "image", info: dict[str, Any] | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 ``[C, H, W]`` at ``size`` (H, W).

    ``resize``: "resize" stretches to the size; "center_crop" scales the short side and crops the centre;
    "pad" fits the whole image inside and pads with black. Images over Pillow's pixel limit (decompression
    bombs), truncated files and non-images raise :class:`InvalidRequestError` naming ``name``. ``info``, when
    given, receives the original ``width`` and ``height``.
    """
    from PIL import Image, UnidentifiedImageError

    h, w = int(size[0]), int(size[1])
    if resize not in RESIZE_POLICIES:
        raise InvalidRequestError(f"unknown resize policy {resize!r}", fix=f"Use one of: {', '.join(RESIZE_POLICIES)}.")
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) == 0:
        raise InvalidRequestError(f"{name}: empty or not bytes", got=type(blob).__name__, fix="Send the encoded PNG/JPEG file's bytes.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(blob)))
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequestError(f"{name}: image too large to decode safely (decompression-bomb limit)", got=str(exc)[:160],
                                  fix=f"Resize it below {Image.MAX_IMAGE_PIXELS} pixels before sending.") from None
    except UnidentifiedImageError:
        raise InvalidRequestError(f"{name}: not an image Pillow can read", got=bytes(blob[:16]),
                                  fix="Use PNG or JPEG files.") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidRequestError(f"{name}: the image is truncated or corrupt", got=str(exc)[:160],
                                  fix="Re-export the file; check that the upload/copy finished.") from None
    if info is not None:
        info["width"], info["height"] = img.width, img.height
    mode = "L" if channels == 1 else "RGB"
    img = img.convert(mode)
    if resize == "resize":
        img = img.resize((w, h), Image.BILINEAR)
    elif resize == "center_crop":
        s = max(w / img.width, h / img.height)
        nw, nh = max(w, round(img.width * s)), max(h, round(img.height * s))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - w) // 2, (nh - h) // 2
        img = img.crop((left, top, left + w, top + h))
    else:
        s = min(w / img.width, h / img.height)
        nw, nh = max(1, round(img.width * s)), max(1, round(img.height * s))
        canvas = Image.new(mode, (w, h))
        canvas.paste(img.resize((nw, nh), Image.BILINEAR), ((w - nw) // 2, (h - nh) // 2))
        img = canvas
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None, :, :]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def decode_images(preprocess: dict[str, Any], blobs: list[bytes]) -> np.ndarray:
    """Decode a batch of PNG/JPEG bytes with the fitted ``preprocess["image"]`` settings: uint8 ``[N, C, H, W]``."""
    im = preprocess.get("image")
    if not im:
        raise InvalidRequestError("this model takes no images", fix="Send the input the model's metadata declares.")
    if not blobs:
        raise InvalidRequestError("expected at least one image", got=0, fix="Send one or more encoded images.")
    out = np.empty((len(blobs), int(im["channels"]), int(im["size"][0]), int(im["size"][1])), dtype=np.uint8)
    for i, b in enumerate(blobs):
        out[i] = decode_image(b, im["size"], int(im["channels"]), im.get("resize", "resize"), name=f"image {i}")
    return out


def image_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images ``[N, C, H, W]`` on the 0..1 scale."""
    if len(x) == 0:
        c = x.shape[1]
        return [0.0] * c, [1.0] * c
    f = x.astype(np.float64) / 255.0
    mean = f.mean(axis=(0, 2, 3))
    std = f.std(axis=(0, 2, 3))
    std = np.where(std < 1e-6, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std]
