"""Fixtures of the data tests: data sets generated at test time (no binaries in git)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from aimass.data.examples import make_customers, make_shapes

REVIEWS = Path(__file__).resolve().parents[2] / "pipelines" / "examples" / "data" / "reviews.jsonl"


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """An image folder: circle/, square/, triangle/ with 30 rendered PNG/JPEG images each."""
    return make_shapes(tmp_path_factory.mktemp("shapes") / "shapes", per_class=30)


@pytest.fixture(scope="session")
def customers_csv(tmp_path_factory) -> Path:
    return make_customers(tmp_path_factory.mktemp("customers") / "customers.csv")


@pytest.fixture(scope="session")
def reviews_jsonl() -> Path:
    return REVIEWS


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` (a decompression bomb's header) without pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
