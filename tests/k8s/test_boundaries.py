"""Package boundaries and public surfaces of the submission code."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import aimass

PKG = Path(aimass.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_only_aimass_k8s_imports_kubernetes():
    offenders = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                 if p.parent.name != "k8s" and any(m == "kubernetes" or m.startswith("kubernetes.") for m in _imports(p))]
    assert offenders == []


@pytest.mark.parametrize("module", ["aimass.k8s", "aimass.api", "aimass.orchestrator.executors.base",
                                    "aimass.k8s.builders", "aimass.k8s.client", "aimass.k8s.errors", "aimass.k8s.validation",
                                    "aimass.orchestrator.executors.ray_jobs", "aimass.orchestrator.executors.kubernetes",
                                    "aimass.api.client"])
def test_exported_members_exist(module):
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_builders_do_not_need_the_kubernetes_client():
    import subprocess
    import sys

    code = "import sys, aimass.k8s.builders, aimass.k8s.errors; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_executors_satisfy_the_protocol():
    from aimass.api.client import ControlPlaneExecutor
    from aimass.orchestrator.executors.base import EXECUTORS, Executor
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor
    from aimass.orchestrator.executors.ray_jobs import RayJobsExecutor

    for cls in (KubernetesExecutor, RayJobsExecutor, ControlPlaneExecutor):
        for name in ("submit", "status", "logs", "cancel", "list", "get", "from_ref"):
            assert callable(getattr(cls, name)), (cls, name)
    assert isinstance(KubernetesExecutor(namespace="x", image="i"), Executor)
    assert {"k8s", "ray", "api"} == set(EXECUTORS)
