"""Check the objects we build before a cluster sees them.

* :func:`validate_kuberay_object` checks a RayJob/RayService/RayCluster against the ``openAPIV3Schema``
  of the KubeRay v1.7 CRDs (with ``jsonschema``), including the ``additionalProperties``/unknown
  field rules the API server would apply on a strict create.
* :func:`kuberay_semantic_errors` repeats the operator's own admission checks that a schema cannot
  express (name length, suspend/TTL/clusterSelector rules, token auth needing Ray >= 2.52, ...).
* :func:`validate_core_object` checks core objects (ConfigMap, and the pod templates inside RayJobs
  as Pods) with ``kubernetes-validate`` when it is installed (a test extra).

The CRDs are looked up in ``$AIMASS_KUBERAY_CRDS``, then ``<repo>/../shared/kuberay-crds``, then
``<repo>/k8s/crds``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import yaml

from aimass.exceptions import InvalidRequestError

__all__ = ["crd_dir", "crd_schema", "validate_kuberay_object", "kuberay_semantic_errors", "validate_core_object",
           "pod_templates", "KUBERNETES_VERSION"]

KUBERNETES_VERSION = "1.30.0"
_PLURALS = {"RayJob": "rayjobs", "RayService": "rayservices", "RayCluster": "rayclusters"}


def crd_dir() -> Path:
    """Where the KubeRay CRD YAML files are."""
    env = os.environ.get("AIMASS_KUBERAY_CRDS")
    candidates = [Path(env)] if env else []
    repo_root = Path(__file__).resolve().parents[2]
    candidates += [repo_root.parent / "shared" / "kuberay-crds", repo_root / "k8s" / "crds"]
    for c in candidates:
        if (c / "ray.io_rayjobs.yaml").is_file():
            return c
    raise FileNotFoundError("KubeRay CRDs not found; set AIMASS_KUBERAY_CRDS to the folder with ray.io_rayjobs.yaml "
                            f"(looked in: {', '.join(map(str, candidates))})")


@functools.lru_cache(maxsize=8)
def crd_schema(kind: str, version: str = "v1") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of a KubeRay kind, with the apiVersion/kind/metadata envelope."""
    if kind not in _PLURALS:
        raise KeyError(f"unknown KubeRay kind {kind!r}; known: {', '.join(_PLURALS)}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~25k lines: use libyaml when present
    doc = yaml.load((crd_dir() / f"ray.io_{_PLURALS[kind]}.yaml").read_text(), Loader=loader)
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{kind} has no version {version!r}")


def _strict(schema: Any) -> Any:
    """Add ``additionalProperties: false`` where the CRD lists properties: the API server prunes unknown
    fields silently; we would rather fail on a typo."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _int_or_string(schema: Any) -> Any:
    """``x-kubernetes-int-or-string`` means integer or string (jsonschema does not know the extension)."""
    if isinstance(schema, dict):
        out = {k: _int_or_string(v) for k, v in schema.items()}
        if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        return out
    if isinstance(schema, list):
        return [_int_or_string(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=8)
def _validator(kind: str, strict: bool) -> Any:
    import jsonschema

    schema = _int_or_string(crd_schema(kind))
    if strict:
        schema = _strict(schema)
        # metadata is validated by the API server against ObjectMeta, not the CRD: allow its fields.
        schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def validate_kuberay_object(obj: dict[str, Any], *, strict: bool = True) -> list[str]:
    """Schema errors of a KubeRay object (empty when valid), each as ``path: message``."""
    kind = obj.get("kind", "")
    api = obj.get("apiVersion", "")
    if api != "ray.io/v1":
        return [f"apiVersion: expected ray.io/v1, got {api!r}"]
    if kind not in _PLURALS:
        return [f"kind: expected one of {', '.join(_PLURALS)}, got {kind!r}"]
    validator = _validator(kind, strict)
    errors = []
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path) or "<root>"
        errors.append(f"{path}: {e.message}")
    return errors


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def kuberay_semantic_errors(obj: dict[str, Any]) -> list[str]:
    """The KubeRay operator's admission rules for RayJob/RayService (v1.7), as messages."""
    errs: list[str] = []
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    name = meta.get("name") or ""
    if kind in ("RayJob", "RayService"):
        if len(name) > 47:
            errs.append(f"metadata.name: {kind} name should be no more than 47 characters")
        if not _DNS1035.match(name):
            errs.append(f"metadata.name: {kind} name should be a valid DNS-1035 label")
    clusters = []
    if kind == "RayJob":
        selector = spec.get("clusterSelector") or {}
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            errs.append("spec.suspend: a RayJob with shutdownAfterJobFinishes false cannot be suspended")
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            errs.append("spec.ttlSecondsAfterFinished must be >= 0")
        if not spec.get("shutdownAfterJobFinishes") and spec.get("ttlSecondsAfterFinished", 0) > 0:
            errs.append("spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes")
        if selector:
            if not selector.get("ray.io/cluster"):
                errs.append("spec.clusterSelector: the cluster name (ray.io/cluster) must not be empty")
            if (spec.get("backoffLimit") or 0) > 0:
                errs.append("spec.backoffLimit: incompatible with clusterSelector")
            if spec.get("suspend"):
                errs.append("spec.suspend: not supported with clusterSelector")
        elif not spec.get("rayClusterSpec"):
            errs.append("spec: one of rayClusterSpec or clusterSelector must be set")
        if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
            errs.append("spec.activeDeadlineSeconds must be a positive integer")
        if spec.get("submissionMode") == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
            errs.append("spec.submitterPodTemplate: not supported in SidecarMode")
        try:
            env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
            if not isinstance(env, dict):
                errs.append("spec.runtimeEnvYAML: must be a YAML mapping")
        except yaml.YAMLError as exc:
            errs.append(f"spec.runtimeEnvYAML: invalid YAML: {exc}")
        if spec.get("rayClusterSpec"):
            clusters.append(("spec.rayClusterSpec", spec["rayClusterSpec"]))
    elif kind == "RayService":
        clusters.append(("spec.rayClusterConfig", spec.get("rayClusterConfig") or {}))
    for where, cs in clusters:
        head = (cs.get("headGroupSpec") or {}).get("template", {}).get("spec", {})
        if not head.get("containers"):
            errs.append(f"{where}.headGroupSpec: should have at least one container")
        autoscaling = bool(cs.get("enableInTreeAutoscaling"))
        for i, wg in enumerate(cs.get("workerGroupSpecs") or []):
            if not (wg.get("template") or {}).get("spec", {}).get("containers"):
                errs.append(f"{where}.workerGroupSpecs[{i}]: should have at least one container")
            if not autoscaling and (wg.get("minReplicas") is None or wg.get("maxReplicas") is None):
                errs.append(f"{where}.workerGroupSpecs[{i}]: minReplicas and maxReplicas are required without autoscaling")
            if wg.get("minReplicas") is not None and wg.get("maxReplicas") is not None and wg["minReplicas"] > wg["maxReplicas"]:
                errs.append(f"{where}.workerGroupSpecs[{i}]: minReplicas > maxReplicas")
        auth = cs.get("authOptions") or {}
        if auth.get("mode") == "token":
            rv = cs.get("rayVersion") or ""
            if not rv:
                errs.append(f"{where}.rayVersion: required with authOptions.mode token (Ray >= 2.52.0)")
            elif _version_tuple(rv) < (2, 52, 0):
                errs.append(f"{where}.rayVersion: authOptions.mode token needs Ray >= 2.52.0, got {rv}")
        if auth.get("enableK8sTokenAuth") and kind in ("RayJob", "RayService"):
            errs.append(f"{where}.authOptions.enableK8sTokenAuth: not supported for {kind}")
        if cs.get("networkPolicy") is not None:
            errs.append(f"{where}.networkPolicy: needs the RayClusterNetworkPolicy feature gate")
    return errs


def pod_templates(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod template inside a RayJob/RayService, with where it is."""
    spec = obj.get("spec") or {}
    out: list[tuple[str, dict[str, Any]]] = []
    if spec.get("submitterPodTemplate"):
        out.append(("spec.submitterPodTemplate", spec["submitterPodTemplate"]))
    for key in ("rayClusterSpec", "rayClusterConfig"):
        cs = spec.get(key)
        if not cs:
            continue
        out.append((f"spec.{key}.headGroupSpec.template", cs["headGroupSpec"]["template"]))
        for i, wg in enumerate(cs.get("workerGroupSpecs") or []):
            out.append((f"spec.{key}.workerGroupSpecs[{i}].template", wg["template"]))
    return out


def validate_core_object(obj: dict[str, Any], *, version: str = KUBERNETES_VERSION, strict: bool = True) -> list[str]:
    """Schema errors of a core Kubernetes object (kubernetes-validate, strict: unknown fields fail)."""
    try:
        import kubernetes_validate
    except ImportError as exc:  # pragma: no cover
        raise InvalidRequestError("kubernetes-validate is not installed", fix="pip install 'aimass[test]'") from exc
    try:
        kubernetes_validate.validate(obj, version, strict=strict)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "<root>"
        return [f"{path}: {e.message}"]
    return []
