"""Artifact stores keyed by URI scheme: local paths (``file://`` or plain) and ``s3://`` (boto3).

This package is the only place that imports boto3.

Example:
    >>> store = get_store("s3://bucket/aimass")            # or "/home/me/.aimass/artifacts"
    >>> uri = store.put_bytes("runs/abc/state.json", b"{}")
    >>> store.get_bytes("runs/abc/state.json")
    b'{}'
"""

from aimass.storage.base import ArtifactStore, check_key, get_store, ray_storage, register_scheme, split_uri
from aimass.storage.local import LocalStore

__all__ = ["ArtifactStore", "LocalStore", "check_key", "get_store", "ray_storage", "register_scheme", "split_uri"]
