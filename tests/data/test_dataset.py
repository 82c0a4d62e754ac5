"""The dataset file and its reference: every modality round-trips; files from before the new fields still open."""

from __future__ import annotations

import boto3
import numpy as np
import pytest

from aimass.data import (
    Dataset,
    DatasetRef,
    TargetSpec,
    build_dataset,
    open_dataset,
    save_dataset,
)
from aimass.exceptions import SpecError
from aimass.spec.configs.data import DataConfig
from aimass.storage import get_store
from tests.s3util import moto_s3


def _equal(a: Dataset, b: Dataset) -> None:
    for s in ("train", "val", "test"):
        xa, ya = a.split(s)
        xb, yb = b.split(s)
        assert np.array_equal(xa, xb) and xa.dtype == xb.dtype and np.array_equal(ya, yb)
        ta, tb = a.targets_split(s), b.targets_split(s)
        assert list(ta) == list(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)
        ca, cb = a.categorical(s), b.categorical(s)
        assert (ca is None and cb is None) or np.array_equal(ca, cb)
    assert a.targets == b.targets and a.preprocess == b.preprocess and a.modality == b.modality


@pytest.mark.parametrize("which", ["text", "table", "image"])
def test_roundtrip_every_modality(which, tmp_path, reviews_jsonl, customers_csv, shapes_dir):
    c = {"text": dict(source=str(reviews_jsonl), modality="text", labelColumn="sentiment",
                      targets=[{"name": "sentiment"}, {"name": "topics", "kind": "multilabel", "separator": "|"}]),
         "table": dict(source=str(customers_csv), modality="table",
                       targets=[{"name": "churn"}, {"name": "spend", "kind": "regression"}]),
         "image": dict(source=str(shapes_dir), modality="image", image={"size": [8, 8]})}[which]
    res = build_dataset(DataConfig.model_validate(c), 0)
    store = get_store(str(tmp_path / "store"))
    ref = save_dataset(res.dataset, store, "d/dataset.npz", digest=res.digest, manifest_key="d/split.json")
    d = ref.to_dict()
    assert d["modality"] == which and d["digest"] == res.digest and d["manifest_key"] == "d/split.json"
    assert d["targets"][0]["name"] == res.dataset.targets[0].name and d["preprocess"] == res.dataset.preprocess
    assert d["features"]["modality"] == which
    back = open_dataset(d)
    _equal(res.dataset, back)
    assert back.split("train+val")[0].shape[0] == len(back.y_train) + len(back.y_val)
    if which == "table":
        assert d["features"]["categorical"]["plan"] == 4  # 3 plans + the 0 code
        assert back.categorical("train+val").shape[0] == len(back.y_train) + len(back.y_val)


def test_files_and_refs_from_before_the_new_fields_still_open(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(30, 2)
    y = np.arange(30) % 3
    path = tmp_path / "old.npz"
    np.savez_compressed(path, x_train=x[:20], y_train=y[:20], x_val=x[20:25], y_val=y[20:25], x_test=x[25:], y_test=y[25:],
                        class_names=np.array(["a", "b", "c"]), feature_mean=np.zeros(2, np.float32), feature_scale=np.ones(2, np.float32))
    old_ref = {"key": "old.npz", "root": str(tmp_path), "sha256": "", "input_shape": [2], "num_classes": 3,
               "class_names": ["a", "b", "c"], "counts": {}}
    ref = DatasetRef.from_dict(old_ref)
    assert ref.modality == "tensor" and ref.targets == [] and ref.digest == ""
    ds = open_dataset(old_ref)
    assert ds.modality == "tensor" and ds.targets == [TargetSpec("label", "classification", ["a", "b", "c"])]
    assert ds.categorical("train") is None and list(ds.targets_split("test")) == ["label"]


def test_s3_image_folder_text_file_and_empty_prefix(tmp_path, monkeypatch, shapes_dir, reviews_jsonl):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto_s3() as url:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket="data")
        for p in sorted(shapes_dir.rglob("*.*"))[::3]:
            s3.upload_file(str(p), "data", f"sets/shapes/{p.relative_to(shapes_dir).as_posix()}")
        s3.upload_file(str(reviews_jsonl), "data", "sets/reviews.jsonl")
        local = build_dataset(DataConfig.model_validate({"source": str(reviews_jsonl), "modality": "text", "labelColumn": "sentiment"}), 0)
        remote = build_dataset(DataConfig.model_validate({"source": "s3://data/sets/reviews.jsonl", "modality": "text",
                                                          "labelColumn": "sentiment"}), 0, endpoint_url=url)
        assert remote.digest == local.digest and remote.manifest["splits"] == local.manifest["splits"]
        img = build_dataset(DataConfig.model_validate({"source": "s3://data/sets/shapes/", "modality": "image",
                                                       "image": {"size": [8, 8]}}), 0, endpoint_url=url)
        assert img.dataset.class_names == ["circle", "square", "triangle"] and sum(img.dataset.preprocess["image"]["size"]) == 16
        assert sum(len(v) for v in img.manifest["splits"].values()) == 30
        manifest = "path,shape\n" + "".join(f"{p.relative_to(shapes_dir).as_posix()},{p.parent.name}\n"
                                            for p in sorted(shapes_dir.rglob("*.*"))[::3])
        s3.put_object(Bucket="data", Key="sets/shapes/manifest.csv", Body=manifest.encode())
        via_manifest = build_dataset(DataConfig.model_validate({"source": "s3://data/sets/shapes/manifest.csv", "modality": "image",
                                                                "labelColumn": "shape", "image": {"size": [8, 8]}}), 0, endpoint_url=url)
        assert via_manifest.manifest["splits"] == img.manifest["splits"]
        assert np.array_equal(via_manifest.dataset.x_test, img.dataset.x_test)
        with pytest.raises(SpecError, match="the S3 prefix holds no objects"):
            build_dataset(DataConfig.model_validate({"source": "s3://data/nothing/here/", "modality": "image"}), 0, endpoint_url=url)
