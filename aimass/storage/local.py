"""Local-directory artifact store with atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from aimass.exceptions import NotFoundError
from aimass.storage.base import ArtifactStore, check_key, split_uri

__all__ = ["LocalStore"]


class LocalStore(ArtifactStore):
    def __init__(self, root_uri: str, **_: object) -> None:
        _, path = split_uri(root_uri)
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root_uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename: a reader (or a crash) never sees half a file
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(p)

    def get_bytes(self, key: str) -> bytes:
        p = self._path(key)
        if not p.is_file():
            raise NotFoundError("artifact not found", got=str(p), fix="Check the key; the run that wrote it may have failed.")
        return p.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [check_key(prefix)]
        if not base.exists():
            return []
        return sorted(f.relative_to(self.root).as_posix() for f in base.rglob("*") if f.is_file() and not f.name.startswith(".tmp-"))

    def put_file(self, local: str | Path, key: str) -> str:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        if Path(local).resolve() != p.resolve():
            tmp = p.with_name(f".tmp-{p.name}")
            shutil.copyfile(local, tmp)
            os.replace(tmp, p)
        return str(p)

    def get_file(self, key: str, local: str | Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError("artifact not found", got=str(src))
        dst = Path(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        return dst

    def delete(self, prefix: str) -> None:
        p = self._path(prefix)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
