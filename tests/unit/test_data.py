"""Data sources, cleaning, stratified seeded splits, normalisation and augmentation."""

from __future__ import annotations

import boto3
import numpy as np
import pandas as pd
import pytest

from aimass.data import load_source, open_dataset, prepare, save_dataset
from aimass.exceptions import SpecError
from aimass.spec.configs.data import DataConfig
from aimass.storage import get_store
from tests.s3util import moto_s3


def cfg(**kw) -> DataConfig:
    return DataConfig.model_validate(kw)


def frame(n=200, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    df["label"] = np.where(df["a"] + df["b"] > 0, "pos", "neg")
    return df


def test_builtin_digits_shapes_and_stratified_default_split():
    c = cfg(source="builtin:digits")
    x, y, names = load_source(c, 42)
    ds, rep = prepare(x, y, names, c, 42)
    total = sum(rep.counts.values())
    assert abs(rep.counts["train"] / total - 0.7) < 0.01 and abs(rep.counts["test"] / total - 0.1) < 0.01
    assert ds.num_classes == 10 and ds.input_shape == [64]
    for split in ("train", "val", "test"):
        _, ys = ds.split(split)
        share = np.bincount(ys, minlength=10) / len(ys)
        assert np.abs(share - np.bincount(y) / len(y)).max() < 0.03, split


def test_split_is_seeded_and_normalisation_uses_train_only():
    c = cfg(source="builtin:iris", split={"train": 0.6, "val": 0.2, "test": 0.2})
    x, y, names = load_source(c, 0)
    a, _ = prepare(x, y, names, c, 7)
    b, _ = prepare(x, y, names, c, 7)
    other, _ = prepare(x, y, names, c, 8)
    assert np.array_equal(a.x_test, b.x_test) and not np.array_equal(a.x_test, other.x_test)
    assert np.allclose(a.feature_mean, a.x_train.mean(axis=0), atol=1e-5)
    assert not np.allclose(a.feature_mean, np.concatenate([a.x_train, a.x_val, a.x_test]).mean(axis=0), atol=1e-4)


def test_cleaning_missing_values_and_duplicates():
    c = cfg(source="synthetic", synthetic={"numSamples": 500, "numFeatures": 6, "missingFraction": 0.05, "duplicateFraction": 0.1})
    x, y, names = load_source(c, 1)
    assert np.isnan(x).any() and len(x) == 550
    ds, rep = prepare(x, y, names, c, 1)
    assert rep.values_imputed > 0 and rep.duplicates_dropped >= 40
    assert not np.isnan(ds.x_train).any()
    dropped, rep2 = prepare(x, y, names, cfg(source="synthetic", synthetic={"numSamples": 500}, clean={"missing": "drop"}), 1)
    assert rep2.rows_missing_dropped > 0
    with pytest.raises(SpecError, match="missing values"):
        prepare(x, y, names, cfg(source="synthetic", synthetic={"numSamples": 500}, clean={"missing": "error"}), 1)


def test_augmentation_adds_noisy_copies_of_training_rows_only():
    c = cfg(source="builtin:digits", imageShape=[1, 8, 8], augment={"copies": 2, "noiseStd": 0.1, "maxShift": 1})
    x, y, names = load_source(c, 0)
    ds, rep = prepare(x, y, names, c, 0)
    assert ds.x_train.shape[1:] == (1, 8, 8)
    assert rep.augmented_rows == 2 * (rep.counts["train"] // 3)
    assert rep.counts["test"] == round(len(y) * 0.1) or abs(rep.counts["test"] - len(y) * 0.1) <= 1


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_local_files(tmp_path, fmt):
    df = frame()
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        np.savez(path, x=df[list("abcd")].to_numpy(), y=df["label"].to_numpy().astype(str))
    x, y, names = load_source(cfg(source=str(path)), 0)
    assert x.shape == (200, 4) and names == ["neg", "pos"] and set(np.unique(y)) == {0, 1}


def test_bad_files_give_clear_errors(tmp_path):
    df = frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(SpecError, match="label column 'target' not found"):
        load_source(cfg(source=str(tmp_path / "d.csv"), labelColumn="target"), 0)
    df.assign(txt="x").to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(SpecError, match="non-numeric feature columns"):
        load_source(cfg(source=str(tmp_path / "t.csv")), 0)
    with pytest.raises(SpecError, match="not found"):
        load_source(cfg(source=str(tmp_path / "none.csv")), 0)
    with pytest.raises(SpecError, match="format"):
        load_source(cfg(source=str(tmp_path / "d.bin")), 0)
    np.savez(tmp_path / "p.npz", x=np.zeros((3, 2)), y=np.array([{"a": 1}, None, 3], dtype=object))
    with pytest.raises(SpecError, match="pickled Python objects"):
        load_source(cfg(source=str(tmp_path / "p.npz")), 0)


def test_s3_source_and_dataset_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto_s3() as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        frame().to_csv(tmp_path / "d.csv", index=False)
        s3.upload_file(str(tmp_path / "d.csv"), "data", "sets/d.csv")
        c = cfg(source="s3://data/sets/d.csv")
        x, y, names = load_source(c, 0, endpoint_url=url)
        assert x.shape == (200, 4)
        ds, _ = prepare(x, y, names, c, 0)
        store = get_store("s3://data/aimass", endpoint_url=url)
        ref = save_dataset(ds, store, "runs/r/steps/data/dataset.npz")
        back = open_dataset(ref.to_dict(), endpoint_url=url)
        assert np.array_equal(back.x_test, ds.x_test) and back.class_names == ["neg", "pos"]


def test_config_errors():
    with pytest.raises(ValueError, match="add up to 1.0"):
        cfg(source="builtin:iris", split={"train": 0.7, "val": 0.2, "test": 0.2})
    with pytest.raises(ValueError, match="unknown builtin"):
        cfg(source="builtin:mnist")
    with pytest.raises(ValueError, match="maxShift needs imageShape"):
        cfg(source="builtin:digits", augment={"maxShift": 1})
