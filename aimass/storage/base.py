"""The artifact-store interface and the scheme registry."""

from __future__ import annotations

import importlib
import posixpath
import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from aimass.exceptions import InvalidRequestError

__all__ = ["ArtifactStore", "get_store", "register_scheme", "check_key", "split_uri"]

_SCHEMES: dict[str, str] = {
    "file": "aimass.storage.local:LocalStore",
    "s3": "aimass.storage.s3:S3Store",
}


def register_scheme(scheme: str, ref: str) -> None:
    """Register a store class ("module:Class") for a URI scheme."""
    _SCHEMES[scheme] = ref


def split_uri(uri: str) -> tuple[str, str]:
    """("s3", "bucket/prefix") or ("file", "/abs/path")."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme.lower(), rest
    return "file", str(Path(uri).expanduser().resolve())


def check_key(key: str) -> str:
    """Normalise a relative key and reject anything that could escape the store's root.

    Decodes percent-encoding first (repeatedly), so ``..%2f`` and ``%252e%252e`` are caught too.
    """
    raw = key
    for _ in range(3):
        decoded = urllib.parse.unquote(key)
        if decoded == key:
            break
        key = decoded
    key = key.replace("\\", "/")
    if "\x00" in key or key.startswith("/") or any(p == ".." for p in key.split("/")):
        raise InvalidRequestError("artifact key escapes the store root", got=raw,
                                  fix="Use a relative key without '..' segments or a leading '/'.")
    norm = posixpath.normpath(key) if key else ""
    return "" if norm == "." else norm


class ArtifactStore(ABC):
    """A place for pipeline outputs: keys are relative, '/'-separated paths under ``root_uri``."""

    root_uri: str

    def uri(self, key: str = "") -> str:
        key = check_key(key)
        return self.root_uri.rstrip("/") + ("/" + key if key else "")

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys (relative to the root) under ``prefix``, recursively, sorted."""

    @abstractmethod
    def put_file(self, local: str | Path, key: str) -> str: ...

    @abstractmethod
    def get_file(self, key: str, local: str | Path) -> Path: ...

    @abstractmethod
    def delete(self, prefix: str) -> None: ...

    def put_dir(self, local_dir: str | Path, key: str) -> str:
        base = Path(local_dir)
        for f in sorted(base.rglob("*")):
            if f.is_file():
                self.put_file(f, posixpath.join(check_key(key), f.relative_to(base).as_posix()))
        return self.uri(key)

    def get_dir(self, key: str, local_dir: str | Path) -> Path:
        key = check_key(key)
        out = Path(local_dir)
        for k in self.list(key):
            rel = k[len(key):].lstrip("/")
            self.get_file(k, out / rel)
        return out

    def local_path(self, key: str) -> Path | None:
        """A local filesystem path for ``key`` when the store is local (fast path), else None."""
        return None


def ray_storage(uri: str, endpoint_url: str | None = None) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray Train/Tune's RunConfig from a store URI.

    ``s3://bucket/prefix`` becomes ``bucket/prefix`` with a pyarrow S3 filesystem carrying the same
    endpoint and credentials as boto3, so checkpoints and Tune's experiment state live in the artifact
    store (a restarted driver, or a node that never saw them, can restore them); a local path is created
    and returned with ``None`` (Ray's local filesystem).
    """
    if uri.startswith("s3://"):
        from aimass.storage.s3 import arrow_filesystem

        return uri[len("s3://"):], arrow_filesystem(endpoint_url)
    _, path = split_uri(uri)
    Path(path).mkdir(parents=True, exist_ok=True)
    return path, None


def get_store(root_uri: str, **options) -> ArtifactStore:
    """The store for ``root_uri``; an unknown scheme lists the known ones."""
    scheme, _ = split_uri(root_uri)
    if scheme not in _SCHEMES:
        raise InvalidRequestError(f"unknown artifact store scheme {scheme!r}", got=root_uri,
                                  fix=f"Use one of: {', '.join(sorted(_SCHEMES))} (or a plain local path).")
    module, _, cls = _SCHEMES[scheme].partition(":")
    return getattr(importlib.import_module(module), cls)(root_uri, **options)
