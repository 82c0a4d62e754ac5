"""Fixtures for the Helm chart tests: one helm, one staged chart, each scenario rendered once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Importable under any pytest import mode (tests/ has no packages of its own).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _helm import (  # noqa: E402
    CrdValidator,
    Helm,
    HelmError,
    find_helm,
    find_kuberay_crds,
    scenario_files,
    stage_chart,
)


@pytest.fixture(scope="session")
def helm_binary() -> Path:
    # Never skip: CI must always render the chart, so a missing helm is a failure.
    try:
        return find_helm()
    except HelmError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def helm(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    workdir = tmp_path_factory.mktemp("helm")
    return Helm(binary=helm_binary, chart=stage_chart(workdir), home=workdir / "home")


@pytest.fixture(scope="session")
def render(helm: Helm) -> Callable[[str], list[dict[str, Any]]]:
    """Render a scenario by name; each one is rendered once per session."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(name: str) -> list[dict[str, Any]]:
        if name not in cache:
            cache[name] = helm.render(scenario_files(name))
        return cache[name]

    return _render


@pytest.fixture(scope="session")
def crd_validator() -> CrdValidator:
    try:
        return CrdValidator(find_kuberay_crds())
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
