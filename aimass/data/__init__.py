"""Data: sources (builtin, synthetic, local files, s3://), cleaning, stratified splits, augmentation.

The data step writes one ``dataset.npz`` (train/val/test arrays) to the artifact store; downstream
steps receive a :class:`DatasetRef` (JSON) and open it with :func:`open_dataset`.
"""

from aimass.data.dataset import Dataset, DatasetRef, open_dataset, save_dataset
from aimass.data.prepare import prepare
from aimass.data.sources import load_source

__all__ = ["Dataset", "DatasetRef", "load_source", "open_dataset", "prepare", "save_dataset"]
