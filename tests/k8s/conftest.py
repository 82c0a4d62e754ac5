"""Fixtures: a tiny pipeline, an in-memory Kubernetes API behind the real client, a private AIMASS_HOME."""

from __future__ import annotations

import pytest

from tests.k8s._support import RUN_ID, tiny_spec

IMAGE = "ghcr.io/acme/aimass:0.1.0"
NAMESPACE = "ml"


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Each test its own AIMASS_HOME (the submission record lives there) and no stray settings."""
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path / "home"))
    for var in ("AIMASS_RAY_IMAGE", "AIMASS_K8S_NAMESPACE", "AIMASS_K8S_SERVICE_ACCOUNT", "AIMASS_K8S_RAY_CLUSTER",
                "AIMASS_API_TOKEN", "AIMASS_API_TOKEN_FILE", "AIMASS_API_URL", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                "AIMASS_TRACKING_URI", "AIMASS_ARTIFACT_ROOT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def spec():
    return tiny_spec()


@pytest.fixture
def run_id() -> str:
    return RUN_ID


@pytest.fixture
def fake():
    from aimass.k8s.testing import FakeKubeApi

    return FakeKubeApi([NAMESPACE])


@pytest.fixture
def executor(fake):
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    return KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, service_account="aimass-runner",
                              api_client=fake.api_client(), sleep=lambda s: None)
