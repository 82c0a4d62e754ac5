"""The image build's clear refusals: no wheelhouse, a BASE without Python 3.11 (real buildah builds,
stopped by the build stage's checks within seconds)."""

from __future__ import annotations

import shutil

import pytest
from _image import (
    BASE_TAG,
    CACHE,
    REPO,
    build_image,
    buildah_cmd,
    ensure_base,
    require_tools,
    sh,
)

pytestmark = [pytest.mark.image, pytest.mark.slow]


@pytest.fixture(scope="module")
def empty_context(tmp_path_factory):
    require_tools()
    ensure_base()
    ctx = tmp_path_factory.mktemp("ctx-empty")
    for name in ("Containerfile", "pyproject.toml", ".containerignore"):
        shutil.copy2(REPO / name, ctx / name)
    shutil.copytree(REPO / "docker", ctx / "docker")
    (ctx / "wheelhouse").mkdir()
    (ctx / "wheelhouse" / "README.md").write_text("empty\n")
    return ctx


def test_build_without_wheelhouse_names_the_command(empty_context):
    p = build_image(empty_context, "localhost/aimass:no-wheelhouse", base=BASE_TAG)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "has no aimass or torch wheel" in out and "docker/build-wheelhouse.sh --variant cpu" in out, out[-2000:]


def test_base_without_python311_is_refused(empty_context, tmp_path):
    nopy = "localhost/aimass-test-nopy:bookworm"
    (tmp_path / "Containerfile").write_text(
        f"FROM {BASE_TAG}\nRUN rm -f /usr/bin/python3.11 /usr/bin/python3 /usr/local/bin/python3.11\n")
    sh(buildah_cmd("bud", "--isolation", "chroot", "-q", "-t", nopy, "-f", str(tmp_path / "Containerfile"),
                   str(tmp_path)))
    try:
        p = build_image(empty_context, "localhost/aimass:no-python", base=nopy)
        out = p.stdout + p.stderr
        assert p.returncode != 0
        assert "the BASE image has no Python 3.11" in out and "python:3.11-slim-bookworm" in out, out[-2000:]
    finally:
        sh(buildah_cmd("rmi", "-f", nopy), check=False)
        assert CACHE.exists()
