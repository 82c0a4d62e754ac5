"""Ray Data views of a prepared split: images stream from the source files named in the split manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aimass.data import build_dataset, save_dataset
from aimass.data.streaming import ray_dataset
from aimass.spec.configs.data import DataConfig
from aimass.storage import get_store

pytestmark = pytest.mark.ray


def _save(res, store, name):
    store.put_bytes(f"{name}/split.json", json.dumps(res.manifest).encode())
    return save_dataset(res.dataset, store, f"{name}/dataset.npz", digest=res.digest, manifest_key=f"{name}/split.json").to_dict()


def test_image_split_streams_from_the_source_files(local_ray, shapes_dir, customers_csv, tmp_path):
    store = get_store(str(tmp_path / "store"))
    res = build_dataset(DataConfig.model_validate({"source": str(shapes_dir), "modality": "image", "image": {"size": [12, 12]}}), 0)
    ref = _save(res, store, "img")
    ds = res.dataset
    rows = ray_dataset(ref, "test", store=store, batch_size=4).take_all()
    assert len(rows) == len(ds.y_test) and rows[0]["x"].dtype == np.uint8 and rows[0]["x"].shape == (3, 12, 12)
    for r in rows:  # every streamed image is the same bytes as the prepared one, with the same label
        match = [i for i in range(len(ds.x_test)) if np.array_equal(ds.x_test[i], r["x"])]
        assert match and ds.y_test[match[0]] == r["label"]
    sizes = [len(b["x"]) for b in ray_dataset(ref, "train", store=store, batch_size=16).iter_batches(batch_size=16)]
    assert sum(sizes) == len(ds.y_train) and max(sizes) <= 16

    table = build_dataset(DataConfig.model_validate({"source": str(customers_csv), "modality": "table",
                                                     "targets": [{"name": "churn"}, {"name": "spend", "kind": "regression"}]}), 0)
    tref = _save(table, store, "tab")
    trows = ray_dataset(tref, "val", store=store).take_all()
    assert len(trows) == len(table.dataset.y_val) and set(trows[0]) == {"x", "c", "churn", "spend"}
    assert np.allclose(np.stack([r["x"] for r in trows]), table.dataset.x_val)
