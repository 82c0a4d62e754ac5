"""Reading raw files with checks that name the file, line and column: CSV, JSONL, Parquet, image folders.

A source is a local path or ``s3://bucket/key`` (a file) / ``s3://bucket/prefix/`` (a folder), read through
:mod:`aimass.storage`. Every reader returns plain Python/pandas objects; :mod:`aimass.data.build` turns them
into a :class:`~aimass.data.dataset.Dataset`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aimass.exceptions import InvalidRequestError, SpecError

__all__ = ["IMAGE_SUFFIXES", "LocalSource", "fetch_source", "list_image_folder", "read_frame", "sha256_file"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class LocalSource:
    """A source made local: ``path`` is a file or a directory; ``uri`` is what the user wrote."""

    uri: str
    path: Path
    is_dir: bool
    temp_dir: Path | None = None  # a download directory to remove when done

    def cleanup(self) -> None:
        """Remove the downloaded copy of an S3 source (a local source is left alone)."""
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _s3_split(src: str) -> tuple[str, str]:
    bucket, _, key = src[len("s3://"):].partition("/")
    if not bucket:
        raise SpecError("S3 source has no bucket", got=src, fix="Use s3://bucket/path/to/file.csv or s3://bucket/prefix/.")
    return bucket, key


def fetch_source(src: str, *, want_dir: bool, endpoint_url: str | None = None) -> LocalSource:
    """Make ``src`` local. ``want_dir``: a folder of files (image folders), else one file.

    S3 folders are downloaded object by object under a temporary directory; an empty prefix is an error.
    """
    if src.startswith("s3://"):
        from aimass.storage import get_store

        bucket, key = _s3_split(src)
        store = get_store(f"s3://{bucket}", endpoint_url=endpoint_url)
        tmp = Path(tempfile.mkdtemp(prefix="aimass-src-"))
        if want_dir:
            prefix = key.rstrip("/")
            keys = [k for k in store.list(prefix) if k.startswith(prefix + "/") or not prefix]
            if not keys:
                raise SpecError("the S3 prefix holds no objects", got=src,
                                fix="Check the bucket and prefix (aws s3 ls); upload the files first.")
            for k in keys:
                rel = k[len(prefix):].lstrip("/") if prefix else k
                store.get_file(k, tmp / rel)
            return LocalSource(src, tmp, True, tmp)
        if not key or key.endswith("/"):
            raise SpecError("S3 source needs a key", got=src, fix="Use s3://bucket/path/to/file.csv.")
        local = tmp / Path(key).name
        store.get_file(key, local)
        return LocalSource(src, local, False, tmp)
    if "://" in src and not src.startswith("file://"):
        raise InvalidRequestError("unsupported data source scheme", got=src, fix="Use builtin:NAME, synthetic, a local path or s3://.")
    path = Path(src.removeprefix("file://")).expanduser()
    if want_dir:
        if not path.is_dir():
            raise SpecError("image folder not found", got=str(path),
                            fix="Give a directory with one subdirectory per class (relative to where aimass runs).")
        return LocalSource(src, path, True)
    if not path.is_file():
        raise SpecError("data file not found", got=str(path), fix="Check the path (relative to where aimass runs).")
    return LocalSource(src, path, False)


def _decode_utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(f"{name}: line {line} is not valid UTF-8 (byte {exc.start})", got=data[max(0, exc.start - 8): exc.start + 8],
                        fix="Re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None


def _read_csv(path: Path, name: str):
    import pandas as pd

    text = _decode_utf8(path.read_bytes(), name)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise SpecError(f"{name} is empty", fix="Give a CSV file with a header row and at least one data row.")
    for row in reader:
        if row and len(row) != len(header):
            raise SpecError(f"{name}: line {reader.line_num} has {len(row)} fields, the header has {len(header)}",
                            got=",".join(row)[:120], fix="Fix that row (quote fields that contain commas).")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise SpecError(f"{name}: duplicate column names", got=dup, fix="Give every column a unique name.")
    return pd.read_csv(io.StringIO(text), keep_default_na=True)


def _read_jsonl(path: Path, name: str):
    import pandas as pd

    text = _decode_utf8(path.read_bytes(), name)
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"{name}: line {i} is not valid JSON ({exc.msg})", got=line[:120],
                            fix="Write one JSON object per line.") from None
        if not isinstance(obj, dict):
            raise SpecError(f"{name}: line {i} is not a JSON object", got=line[:120], fix='Write one object per line: {"text": ..., "label": ...}.')
        rows.append(obj)
    if not rows:
        raise SpecError(f"{name} has no rows", fix="Write one JSON object per line.")
    return pd.DataFrame(rows)


def _read_parquet(path: Path, name: str):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise SpecError(f"{name} is not a readable Parquet file", got=str(exc)[:160], fix="Re-export the file.") from None


def read_frame(path: Path, fmt: str, name: str | None = None):
    """A pandas DataFrame from a CSV (column counts and UTF-8 checked), JSONL or Parquet file."""
    name = name or path.name
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}.get(fmt)
    if reader is None:
        raise SpecError(f"format {fmt!r} is not a table format", fix="Use csv, jsonl or parquet.")
    return reader(path, name)


def list_image_folder(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(relative path, class) of every PNG/JPEG in a class-per-subdirectory folder, sorted; and the classes.

    Empty class directories are errors (a class with no examples cannot be learned or evaluated).
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SpecError(f"image folder {root} has no class subdirectories",
                        fix="Put the images of each class in their own subdirectory (e.g. shapes/circle/1.png).")
    items: list[tuple[str, str]] = []
    for cls in classes:
        files = sorted(f for f in (root / cls).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SpecError(f"class {cls!r} has no images", got=str(root / cls),
                            fix=f"Add PNG/JPEG files to {cls}/ or remove the empty directory.")
        items += [(posixpath.join(*f.relative_to(root).parts), cls) for f in files]
    return items, classes
