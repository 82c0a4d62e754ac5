"""Data: sources (builtin, synthetic, tables, images, text; local files and s3://), checks, targets,
seeded stratified splits, fitted preprocessing and augmentation.

The data step writes one ``dataset.npz`` (train/val/test arrays, no pickles) and a split manifest
(``split.json``: row or file ids per split) to the artifact store; downstream steps receive a
:class:`DatasetRef` (JSON) and open it with :func:`open_dataset`. See docs/data.md.
"""

from aimass.data.build import BuildResult, build_dataset
from aimass.data.dataset import (
           Dataset,
           DatasetRef,
           TargetSpec,
           open_dataset,
           save_dataset,
)
from aimass.data.prepare import prepare
from aimass.data.preprocess import decode_images, encode_table_rows
from aimass.data.sources import load_source

__all__ = ["BuildResult", "Dataset", "DatasetRef", "TargetSpec", "build_dataset", "decode_images", "encode_table_rows",
           "load_source", "open_dataset", "prepare", "save_dataset"]
