"""build_dataset in every modality: images (folder, manifest), text (JSONL/CSV/Parquet), tables; splits and checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from aimass.data import build_dataset
from aimass.exceptions import SpecError, StepError
from aimass.spec.configs.data import DataConfig
from tests.data.conftest import png_header_only


def cfg(**kw) -> DataConfig:
    return DataConfig.model_validate(kw)


# -- images -------------------------------------------------------------------------------------------------------------
def test_image_folder_decodes_splits_stratified_and_fits_on_train(shapes_dir):
    c = cfg(source=str(shapes_dir), modality="image", image={"size": [16, 16], "resize": "center_crop"})
    res = build_dataset(c, 0)
    ds = res.dataset
    assert ds.modality == "image" and ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (3, 16, 16)
    assert ds.class_names == ["circle", "square", "triangle"] and ds.targets[0].kind == "classification"
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 90 and abs(len(ds.y_test) - 9) <= 1
    for y in (ds.y_train, ds.y_val, ds.y_test):
        counts = np.bincount(y, minlength=3)
        assert counts.max() - counts.min() <= 1  # stratified: 30 per class split alike
    pre = ds.preprocess["image"]
    assert pre["size"] == [16, 16] and pre["resize"] == "center_crop" and pre["channels"] == 3
    mean_train = (ds.x_train.astype(float) / 255).mean(axis=(0, 2, 3))
    assert np.allclose(pre["mean"], mean_train) and np.allclose(ds.feature_mean, mean_train, atol=1e-6)
    m = res.manifest
    assert m["idKind"] == "file" and sorted(m["splits"]["test"])[0].startswith(("circle/", "square/", "triangle/"))
    assert sum(len(v) for v in m["splits"].values()) == 90 and len(res.stats["image_sizes"]) == 90
    again = build_dataset(c, 0)
    assert again.manifest == m and again.digest == res.digest and np.array_equal(again.dataset.x_test, ds.x_test)
    other = build_dataset(c, 1)
    assert other.manifest["splits"]["test"] != m["splits"]["test"]


def test_image_manifest_with_several_targets(shapes_dir, tmp_path):
    root = tmp_path / "imgs"
    shutil.copytree(shapes_dir, root)
    rows = []
    for p in sorted(root.rglob("*.*")):
        rel = p.relative_to(root).as_posix()
        shape = p.parent.name
        rows.append({"file": rel, "shape": shape, "round": int(shape == "circle"), "corners": {"circle": 0, "square": 4, "triangle": 3}[shape]})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    c = cfg(source=str(root / "manifest.parquet"), modality="image", image={"size": [8, 8], "channels": 1, "pathColumn": "file"},
            targets=[{"name": "shape"}, {"name": "corners", "kind": "regression"}, {"name": "flags", "kind": "multilabel", "columns": ["round"]}])
    ds = build_dataset(c, 0).dataset
    assert ds.x_train.shape[1:] == (1, 8, 8) and [t.name for t in ds.targets] == ["shape", "corners", "flags"]
    ys = ds.targets_split("test")
    assert ys["corners"].dtype == np.float32 and ys["corners"].shape == (len(ds.y_test), 1)
    names = np.array(ds.class_names)[ys["shape"]]
    assert np.array_equal(ys["corners"][:, 0], np.select([names == "circle", names == "square"], [0, 4], 3))
    assert np.array_equal(ys["flags"][:, 0], (names == "circle").astype(np.float32))


def test_unreadable_images_fail_naming_the_file_or_are_counted_when_skipped(shapes_dir, tmp_path):
    root = tmp_path / "shapes"
    shutil.copytree(shapes_dir, root)
    (root / "circle" / "broken.png").write_bytes(b"not a png at all")
    good = (root / "square" / "square_001.png").read_bytes()
    (root / "square" / "half.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(SpecError, match=r"unreadable image circle/broken.png: not an image.*onError: skip"):
        build_dataset(cfg(source=str(root), modality="image"), 0)
    (root / "circle" / "broken.png").unlink()
    (root / "triangle" / "huge.png").write_bytes(png_header_only(20_000, 20_000))
    with pytest.raises(SpecError, match=r"unreadable image square/half.png: the image is truncated"):
        build_dataset(cfg(source=str(root), modality="image"), 0)
    (root / "circle" / "broken.png").write_bytes(b"not a png at all")
    res = build_dataset(cfg(source=str(root), modality="image", image={"onError": "skip"}), 0)
    assert res.metrics["images_skipped"] == 3
    assert {s["id"] for s in res.manifest["skipped"]} == {"circle/broken.png", "square/half.png", "triangle/huge.png"}
    assert "decompression-bomb" in {s["id"]: s["reason"] for s in res.manifest["skipped"]}["triangle/huge.png"]
    assert "truncated" in {s["id"]: s["reason"] for s in res.manifest["skipped"]}["square/half.png"]


def test_empty_class_and_too_small_class(shapes_dir, tmp_path):
    root = tmp_path / "shapes"
    shutil.copytree(shapes_dir, root)
    (root / "hexagon").mkdir()
    with pytest.raises(SpecError, match="class 'hexagon' has no images"):
        build_dataset(cfg(source=str(root), modality="image"), 0)
    shutil.copy(root / "circle" / "circle_001.png", root / "hexagon" / "h.png")
    with pytest.raises(SpecError, match="class 'hexagon' has 1 example.*stratify: false"):
        build_dataset(cfg(source=str(root), modality="image"), 0)


# -- text ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_text_formats_with_a_class_and_a_multilabel_target(reviews_jsonl, tmp_path, fmt):
    df = pd.read_json(reviews_jsonl, lines=True)
    path = reviews_jsonl
    if fmt == "csv":
        path = tmp_path / "r.csv"
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        path = tmp_path / "r.parquet"
        df.to_parquet(path)
    c = cfg(source=str(path), modality="text", targets=[{"name": "sentiment"}, {"name": "topics", "kind": "multilabel", "separator": "|"}])
    res = build_dataset(c, 0)
    ds = res.dataset
    assert ds.modality == "text" and ds.x_train.dtype.kind == "U" and len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 200
    assert ds.class_names == ["negative", "positive"] and ds.targets[1].class_names == ["food", "place", "price", "service"]
    assert ds.preprocess["text"]["column"] == "text" and ds.feature_mean.size == 0
    topics = ds.targets_split("train")["topics"]
    assert topics.dtype == np.float32 and topics.shape == (len(ds.y_train), 4) and set(np.unique(topics)) == {0.0, 1.0}
    i = res.manifest["splits"]["train"][0]
    row = df.iloc[i]
    pos = list(ds.x_train).index(row["text"])
    assert ds.class_names[ds.y_train[pos]] == row["sentiment"]
    assert {ds.targets[1].class_names[j] for j in np.flatnonzero(topics[pos])} == set(row["topics"].split("|"))


def test_text_checks_name_the_row_and_skips_are_counted(tmp_path):
    rows = [{"text": f"sentence number {i}", "label": "ab"[i % 2]} for i in range(30)]
    rows[4]["text"] = ""
    rows[7]["text"] = "x" * 50
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(SpecError, match="row 4: empty or missing text"):
        build_dataset(cfg(source=str(p), modality="text"), 0)
    res = build_dataset(cfg(source=str(p), modality="text", text={"maxChars": 40, "onError": "skip"}), 0)
    assert res.metrics["rows_skipped"] == 2 and sorted(s["id"] for s in res.manifest["skipped"]) == [4, 7]
    with pytest.raises(SpecError, match="text column 'body' not found"):
        build_dataset(cfg(source=str(p), modality="text", text={"textColumn": "body"}), 0)
    with pytest.raises(SpecError, match="column 'label2' not found in t.jsonl"):
        build_dataset(cfg(source=str(p), modality="text", labelColumn="label2"), 0)


def test_bad_files_non_utf8_column_count_and_json(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(SpecError, match="latin.csv: line 3 is not valid UTF-8"):
        build_dataset(cfg(source=str(p), modality="text"), 0)
    p = tmp_path / "cols.csv"
    p.write_text("text,label\nok,a\nbad,row,extra\n")
    with pytest.raises(SpecError, match="cols.csv: line 3 has 3 fields, the header has 2"):
        build_dataset(cfg(source=str(p), modality="text"), 0)
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(SpecError, match="bad.jsonl: line 2 is not valid JSON"):
        build_dataset(cfg(source=str(p), modality="text"), 0)


# -- tables -------------------------------------------------------------------------------------------------------------
def test_table_types_inferred_overridable_and_fitted_on_train(customers_csv):
    c = cfg(source=str(customers_csv), modality="table", table={"columns": {"support_calls": "categorical"}},
            targets=[{"name": "churn"}, {"name": "spend", "kind": "regression", "lossWeight": 0.1}])
    res = build_dataset(c, 0)
    ds = res.dataset
    assert ds.preprocess["numeric"]["columns"] == ["age", "tenure_months"]
    assert ds.preprocess["categorical"]["columns"] == ["plan", "region", "support_calls"]
    assert ds.x_train.dtype == np.float32 and not np.isnan(ds.x_train).any()
    assert ds.c_train.dtype == np.int64 and ds.c_train.shape == (len(ds.y_train), 3)
    assert (ds.c_train[:, 1] == 0).any()  # missing regions are code 0
    frame = pd.read_csv(customers_csv)
    train = frame.iloc[res.manifest["splits"]["train"]]
    assert np.isclose(ds.preprocess["numeric"]["fill"][0], train["age"].mean())  # train rows only
    assert not np.isclose(ds.preprocess["numeric"]["fill"][0], frame["age"].mean())
    assert ds.targets[1].loss_weight == 0.1 and ds.targets_split("val")["spend"].shape == (len(ds.y_val), 1)
    assert {s["column"] for s in res.stats["columns"]} == {"age", "tenure_months", "plan", "region", "support_calls"}
    assert res.metrics["values_imputed"] > 0
    assert res.manifest["idKind"] == "row" and sorted(sum(res.manifest["splits"].values(), [])) == list(range(len(frame)))


def test_table_checks(customers_csv, tmp_path):
    with pytest.raises(SpecError, match="target 'label': column 'label' not found"):
        build_dataset(cfg(source=str(customers_csv), modality="table"), 0)
    with pytest.raises(SpecError, match="column 'plan' is numeric but row 0 holds a non-number"):
        build_dataset(cfg(source=str(customers_csv), modality="table", labelColumn="churn", table={"columns": {"plan": "numeric"}}), 0)
    with pytest.raises(SpecError, match="row 0, column 'plan' of regression target 'plan' is not a number"):
        build_dataset(cfg(source=str(customers_csv), modality="table", targets=[{"name": "plan", "kind": "regression"}]), 0)
    with pytest.raises(SpecError, match="column 'age' has missing values"):
        build_dataset(cfg(source=str(customers_csv), modality="table", labelColumn="churn", clean={"missing": "error"}), 0)
    with pytest.raises(SpecError, match="does not have"):
        build_dataset(cfg(source=str(customers_csv), modality="table", labelColumn="churn", table={"columns": {"nope": "ignore"}}), 0)
    dropped = build_dataset(cfg(source=str(customers_csv), modality="table", labelColumn="churn", clean={"missing": "drop"}), 0)
    assert dropped.metrics["rows_missing_dropped"] > 0 and (dropped.dataset.c_train > 0).all()


def test_label_seen_only_outside_training_is_an_error(tmp_path):
    df = pd.DataFrame({"x": np.arange(40.0), "label": ["a", "b"] * 19 + ["rare", "rare"]})
    df.to_csv(tmp_path / "d.csv", index=False)
    c = cfg(source=str(tmp_path / "d.csv"), modality="table", split={"train": 0.5, "val": 0.25, "test": 0.25, "stratify": False})
    for seed in range(50):
        try:
            build_dataset(c, seed)
        except StepError as exc:
            assert "label 'rare' appears only outside the training split" in str(exc)
            return
    pytest.fail("no seed put both 'rare' rows outside the training split")


def test_config_errors():
    with pytest.raises(ValueError, match="set modality: image"):
        cfg(source="x/", image={"size": [8, 8]})
    with pytest.raises(ValueError, match="reads files"):
        cfg(source="builtin:iris", modality="table")
    with pytest.raises(ValueError, match="target names must be unique"):
        cfg(source="a.csv", modality="table", targets=[{"name": "a"}, {"name": "a", "kind": "regression"}])
    with pytest.raises(ValueError, match="single classification target"):
        cfg(source="a.csv", targets=[{"name": "y", "kind": "regression"}])
    with pytest.raises(ValueError, match="separator"):
        cfg(source="a.csv", modality="table", targets=[{"name": "y", "separator": "|"}])
    with pytest.raises(ValueError, match="image size"):
        cfg(source="x/", modality="image", image={"size": [0, 8]})
    with pytest.raises(ValueError, match="Extra inputs"):
        cfg(source="x/", modality="image", image={"sise": [8, 8]})
