"""Ray Data views of a prepared split (partial: see docs/data.md, "Streaming").

:func:`ray_dataset` returns a lazily executed :class:`ray.data.Dataset` of one split:

- image data sets stream from the **source files** listed in the split manifest: the file ids and their targets
  come from ``split.json``; reading and decoding (Pillow, the fitted ``preprocess["image"]`` settings, the
  decompression-bomb limit kept) run in Ray Data tasks, batch by batch, so the decoded split never has to fit
  in one process;
- the other modalities are served from the prepared arrays (``dataset.npz``), in blocks.

Rows carry ``x`` plus one column per target; table rows also carry ``c`` (category codes). Feed a Ray Train
trainer with ``datasets={"train": ray_dataset(ref, "train")}`` and read ``ray.train.get_dataset_shard("train")``
in the workers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ray_dataset", "ImageDecoder"]


class ImageDecoder:
    """A Ray Data batch transform: ``{"id": file ids, targets...}`` -> ``{"x": uint8 [B,C,H,W], targets...}``.

    Files are read from a local root directory or from an ``s3://bucket/prefix/`` root through aimass.storage.
    """

    def __init__(self, root: str, image: dict[str, Any], endpoint_url: str | None = None) -> None:
        self.root, self.image, self.endpoint_url = root, image, endpoint_url
        self._store = None

    def _read(self, rel: str) -> bytes:
        if self.root.startswith("s3://"):
            if self._store is None:
                from aimass.storage import get_store

                self._store = get_store(self.root.rstrip("/"), endpoint_url=self.endpoint_url)
            return self._store.get_bytes(rel)
        return (Path(self.root) / rel).read_bytes()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from aimass.data.preprocess import decode_image

        im = self.image
        ids = [str(i) for i in batch["id"]]
        x = np.empty((len(ids), int(im["channels"]), int(im["size"][0]), int(im["size"][1])), dtype=np.uint8)
        for i, rel in enumerate(ids):
            x[i] = decode_image(self._read(rel), im["size"], int(im["channels"]), im.get("resize", "resize"), name=rel)
        out = {k: v for k, v in batch.items() if k != "id"}
        out["x"] = x
        return out


def ray_dataset(ref, split: str, *, store=None, endpoint_url: str | None = None, batch_size: int = 64):
    """A lazily executed Ray Dataset of ``split`` ("train", "val" or "test") of a prepared data set."""
    import ray.data

    from aimass.data.dataset import DatasetRef, open_dataset
    from aimass.exceptions import SpecError

    if split not in ("train", "val", "test"):
        raise SpecError(f"unknown split {split!r}", fix="Use train, val or test.")
    if isinstance(ref, dict):
        ref = DatasetRef.from_dict(ref)
    if store is None:
        from aimass.storage import get_store

        store = get_store(ref.root, endpoint_url=endpoint_url)
    manifest = json.loads(store.get_bytes(ref.manifest_key)) if ref.manifest_key else {}
    if ref.modality == "image" and manifest.get("root") and manifest.get("labels"):
        ids = manifest["splits"][split]
        labels = manifest["labels"][split]
        items = [{"id": i, **{t: labels[t][k] for t in labels}} for k, i in enumerate(ids)]
        return ray.data.from_items(items).map_batches(
            ImageDecoder, fn_constructor_kwargs={"root": manifest["root"], "image": ref.preprocess["image"],
                                                 "endpoint_url": endpoint_url},
            batch_size=batch_size, batch_format="numpy", concurrency=(1, 4))
    import pandas as pd

    ds = open_dataset(ref, store=store)
    x, _ = ds.split(split)
    cols: dict[str, Any] = {"x": list(x) if x.ndim > 1 else x}
    for name, y in ds.targets_split(split).items():
        cols[name] = list(y) if y.ndim > 1 else y
    c = ds.categorical(split)
    if c is not None:
        cols["c"] = list(c)
    return ray.data.from_pandas(pd.DataFrame(cols))
