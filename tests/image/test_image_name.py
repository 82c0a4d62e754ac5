"""The image's name comes from one place (aimass.k8s.image): the chart, builders, samples and docs agree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from aimass import __version__
from aimass.k8s.image import DEFAULT_IMAGE, IMAGE_REPOSITORY, default_image

REPO = Path(__file__).resolve().parents[2]


def test_chart_uses_the_image_repository_and_version():
    values = yaml.safe_load((REPO / "helm/aimass/values.yaml").read_text())
    chart = yaml.safe_load((REPO / "helm/aimass/Chart.yaml").read_text())
    assert values["image"]["repository"] == IMAGE_REPOSITORY
    assert values["image"]["tag"] in ("", __version__)
    assert chart["appVersion"] == __version__
    assert DEFAULT_IMAGE == f"{IMAGE_REPOSITORY}:{__version__}" == default_image()


def test_samples_and_docs_name_the_default_image():
    lines = []
    for f in sorted((REPO / "k8s").glob("*.yaml")):
        lines += [(f.name, m.group(1)) for m in re.finditer(r"^\s*image:\s*(\S+)", f.read_text(), re.MULTILINE)]
    assert lines, "the k8s/ samples have no image lines"
    assert {img for _, img in lines} == {DEFAULT_IMAGE}, lines
    install = (REPO / "docs/install.md").read_text()
    assert f"{IMAGE_REPOSITORY}:<appVersion>" in install and "buildah bud" in install and "docker build" in install


def test_containerfile_version_matches_the_package():
    text = (REPO / "Containerfile").read_text()
    assert f"ARG VERSION={__version__}" in text
    assert "ARG BASE=docker.io/library/python:3.11-slim-bookworm" in text


def test_builders_default_to_the_image():
    from aimass.k8s.builders import build_rayservice

    svc = build_rayservice({"applications": []}, "digits", "ml")
    spec = svc["spec"]["rayClusterConfig"]
    images = {c["image"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"]}
    for g in spec.get("workerGroupSpecs", []):
        images |= {c["image"] for c in g["template"]["spec"]["containers"]}
    assert images == {DEFAULT_IMAGE}
