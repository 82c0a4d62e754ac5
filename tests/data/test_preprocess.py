"""Fitted preprocessing: table encoders and image decoding, as training and serving both use them."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aimass.data.preprocess import (
    decode_image,
    decode_images,
    encode_table,
    encode_table_rows,
    fit_categorical,
    fit_numeric,
    image_stats,
)
from aimass.exceptions import InvalidRequestError
from tests.data.conftest import png_header_only


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_fit_numeric_uses_the_given_rows_and_fills_missing():
    v = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]])
    pre = fit_numeric(v, ["a", "b"], fill="mean", normalize="standard")
    assert pre["fill"] == [2.0, 6.0]
    filled = np.array([[1, 6], [3, 4], [2, 8]], dtype=float)
    assert np.allclose(pre["mean"], filled.mean(0)) and np.allclose(pre["scale"], filled.std(0))
    assert fit_numeric(v, ["a", "b"], fill="median")["fill"] == [2.0, 6.0]
    assert fit_numeric(v, ["a", "b"], fill="zero", normalize="none") == {
        "columns": ["a", "b"], "mean": [0.0, 0.0], "scale": [1.0, 1.0], "fill": [0.0, 0.0]}
    const = fit_numeric(np.ones((4, 1)), ["c"])
    assert const["scale"] == [1.0]  # a constant column never divides by zero


def test_categorical_vocab_by_frequency_and_codes():
    df = pd.DataFrame({"city": ["Rome", "Oslo", "Rome", None, "Lima", "Rome", "Oslo"]})
    pre = {"categorical": fit_categorical(df, ["city"], max_categories=2)}
    assert pre["categorical"]["vocab"]["city"] == ["Rome", "Oslo"]  # most frequent first; Lima beyond the cap
    x, c = encode_table(pre, pd.DataFrame({"city": ["Oslo", "Lima", None, "Paris", "Rome"]}))
    assert x.shape == (5, 0) and c[:, 0].tolist() == [2, 0, 0, 0, 1]


def test_encode_table_rows_equals_encode_table_and_handles_missing_and_unseen():
    pre = {"numeric": {"columns": ["age", "n"], "mean": [40.0, 0.0], "scale": [10.0, 1.0], "fill": [41.5, 0.0]},
           "categorical": {"columns": ["plan"], "vocab": {"plan": ["basic", "pro"]}}}
    rows = [{"age": 30, "n": "2", "plan": "pro"}, {"age": None, "plan": "gold"}, {"n": 1.5}]
    x, c = encode_table_rows(pre, rows)
    assert x.dtype == np.float32 and c.dtype == np.int64
    assert x.tolist() == [[30.0, 2.0], [41.5, 0.0], [41.5, 1.5]] and c.tolist() == [[2], [0], [0]]
    x2, c2 = encode_table(pre, pd.DataFrame(rows))
    assert np.array_equal(x, x2) and np.array_equal(c, c2)


@pytest.mark.parametrize("rows,match", [
    ([{"age": "old"}], "row 0: column 'age' must be a number"),
    ([{"age": 1}, {"height": 2}], "row 1 has columns the model does not know"),
    ([], "non-empty list"),
    ([["a"]], "row 0 is not an object"),
])
def test_encode_table_rows_refuses_bad_rows(rows, match):
    pre = {"numeric": {"columns": ["age"], "mean": [0.0], "scale": [1.0], "fill": [0.0]}}
    with pytest.raises(InvalidRequestError, match=match):
        encode_table_rows(pre, rows)


def test_decode_image_sizes_channels_and_policies():
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :20] = 255  # left half white
    blob = _png(wide)
    info: dict = {}
    out = decode_image(blob, (10, 10), 3, "resize", info=info)
    assert out.shape == (3, 10, 10) and out.dtype == np.uint8 and info == {"width": 40, "height": 20}
    assert out[:, :, :4].min() > 200 and out[:, :, 6:].max() < 50  # stretched: left half still white
    crop = decode_image(blob, (10, 10), 3, "center_crop")
    assert crop[:, :, :4].min() > 200 and crop[:, :, 6:].max() < 50  # the centre 20x20: half white, half black
    pad = decode_image(blob, (10, 10), 1, "pad")
    assert pad.shape == (1, 10, 10)
    assert pad[0, :2].max() == 0 and pad[0, 8:].max() == 0 and pad[0, 4, :4].min() > 200  # letterboxed top/bottom
    jpg = decode_image(_png(wide, "JPEG"), (10, 10), 3, "resize")
    assert np.abs(jpg.astype(int) - out.astype(int)).mean() < 20
    batch = decode_images({"image": {"size": [10, 10], "channels": 3, "resize": "resize"}}, [blob, blob])
    assert batch.shape == (2, 3, 10, 10) and np.array_equal(batch[0], out)


def test_decode_image_refuses_bombs_truncated_and_non_images():
    assert Image.MAX_IMAGE_PIXELS and Image.MAX_IMAGE_PIXELS < 20_000 * 20_000  # Pillow's limit is kept
    with pytest.raises(InvalidRequestError, match="decompression-bomb"):
        decode_image(png_header_only(20_000, 20_000), (8, 8))
    good = _png(np.full((64, 64, 3), 128, dtype=np.uint8))
    with pytest.raises(InvalidRequestError, match="truncated or corrupt"):
        decode_image(good[: len(good) // 2], (8, 8), name="x.png")
    with pytest.raises(InvalidRequestError, match="not an image"):
        decode_image(b"hello, I am text", (8, 8))
    with pytest.raises(InvalidRequestError, match="empty"):
        decode_image(b"", (8, 8))
    with pytest.raises(InvalidRequestError, match="image 1: not an image"):
        decode_images({"image": {"size": [8, 8], "channels": 3}}, [good, b"nope"])
    with pytest.raises(InvalidRequestError, match="takes no images"):
        decode_images({}, [good])


def test_image_stats_per_channel():
    x = np.zeros((2, 3, 4, 4), dtype=np.uint8)
    x[:, 0] = 255
    x[1, 1] = 255
    mean, std = image_stats(x)
    assert np.allclose(mean, [1.0, 0.5, 0.0]) and np.allclose(std, [1.0, 0.5, 1.0])  # a constant channel gets std 1
