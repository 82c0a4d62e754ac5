"""Kubernetes for AI Mass: the only package that imports ``kubernetes``.

* :mod:`aimass.k8s.builders`: the ConfigMap, RayJob and RayService objects (plain dicts, no client needed).
* :mod:`aimass.k8s.client`: :class:`KubeRayClient`: create, watch, logs, cancel, over an injectable ApiClient.
* :mod:`aimass.k8s.errors`: Kubernetes failures as clear errors (RBAC, missing CRDs, quota).
* :mod:`aimass.k8s.validation`: schema checks against the KubeRay CRDs and the Kubernetes schemas.
* :mod:`aimass.k8s.testing`: an in-memory API server for tests.

Example:
    >>> from aimass.k8s import build_configmap, build_rayjob, KubeRayClient
    >>> kr = KubeRayClient()                                    # doctest: +SKIP
    >>> kr.create_run(build_configmap(spec, rid, "ml"),
    ...               build_rayjob(spec, rid, "ml", image="ghcr.io/acme/aimass:0.1.0"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from aimass.k8s.builders import (
    ClusterShape,
    SecretEnv,
    build_configmap,
    build_rayjob,
    build_rayservice,
    configmap_name,
    rayjob_name,
)
from aimass.k8s.errors import KubeRayNotInstalledError, KubernetesForbiddenError, KubernetesQuotaError, translate_api_error

__all__ = [
    "ClusterShape",
    "SecretEnv",
    "build_configmap",
    "build_rayjob",
    "build_rayservice",
    "configmap_name",
    "rayjob_name",
    "KubeRayClient",
    "load_api_client",
    "rayjob_run_status",
    "KubeRayNotInstalledError",
    "KubernetesForbiddenError",
    "KubernetesQuotaError",
    "translate_api_error",
]

_LAZY = {"KubeRayClient", "load_api_client", "rayjob_run_status"}


def __getattr__(name: str) -> Any:
    # The client imports the kubernetes package (slow); builders and errors do not need it.
    if name in _LAZY:
        from aimass.k8s import client

        return getattr(client, name)
    raise AttributeError(f"module 'aimass.k8s' has no attribute {name!r}")
