"""The aimass Helm chart and the k8s/ samples, rendered with the real helm and checked offline.

Every scenario under helm/aimass/ci/ (and the defaults) must lint strictly, render, validate
against the Kubernetes and KubeRay schemas, and keep the security baseline of
docs RELIABILITY.md: restricted pods, least-privilege RBAC, default-deny networking, no inline
secrets, Ray never exposed.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from _helm import (
    CHART_DIR,
    KUBERAY_DEPENDENCY,
    RAY_KINDS,
    REPO_ROOT,
    SAMPLES_DIR,
    SCENARIOS,
    CrdValidator,
    Endpoint,
    Helm,
    api_group,
    autoscaler_violations,
    containers,
    is_crd_kind,
    kuberay_pod_labels,
    load_manifests,
    monitoring_errors,
    object_id,
    pod_specs,
    ray_cluster_specs,
    restricted_violations,
    scenario_files,
    selector_matches,
    traffic_allowed,
    validate_k8s,
)

pytestmark = pytest.mark.helm

Render = Callable[[str], list[dict[str, Any]]]

ALL = list(SCENARIOS)
NAMESPACE = "aimass"
SAMPLE_FILES = sorted(SAMPLES_DIR.glob("*.yaml"))

# Ports of the Ray head that must never be reachable from outside: GCS, dashboard/Jobs API,
# client, dashboard agent, metrics.
RAY_PRIVATE_PORTS = {6379, 8265, 10001, 52365, 8080}


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def scenario_values(name: str) -> dict[str, Any]:
    """The values a scenario renders with: defaults overlaid with its file."""
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    for path in scenario_files(name):
        values = deep_merge(values, yaml.safe_load(path.read_text()))
    return values


def deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: deep_merge(base.get(k), v) for k, v in override.items()}}
    return override


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --------------------------------------------------------------------------------------------
# helm itself, lint, render
# --------------------------------------------------------------------------------------------


def test_helm_binary_runs(helm: Helm) -> None:
    version = helm.run("version", "--short").stdout.strip()
    assert re.match(r"^v[34]\.\d+\.\d+", version), version


def test_chart_declares_the_kuberay_operator_dependency() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["dependencies"] == [
        {
            **KUBERAY_DEPENDENCY,
            "repository": "https://ray-project.github.io/kuberay-helm/",
            "condition": "kuberay-operator.enabled",
        }
    ]
    assert yaml.safe_load((CHART_DIR / "values.yaml").read_text())["kuberay-operator"] == {"enabled": False}


@pytest.mark.parametrize("scenario", ALL)
def test_lint_strict(helm: Helm, scenario: str) -> None:
    proc = helm.lint(scenario_files(scenario))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("scenario", ALL)
def test_renders_only_namespaced_objects_in_the_release_namespace(render: Render, scenario: str) -> None:
    objects = render(scenario)
    assert objects
    names = [object_id(o) for o in objects]
    assert len(names) == len(set(names)), f"duplicate objects: {sorted(names)}"
    for obj in objects:
        assert obj["metadata"].get("namespace") == NAMESPACE, f"{object_id(obj)} is not in the release namespace"
        assert obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition")


@pytest.mark.parametrize("scenario", ALL)
def test_standard_labels_on_every_object(render: Render, scenario: str) -> None:
    for obj in render(scenario):
        labels = obj["metadata"].get("labels", {})
        if labels.get("helm.sh/chart", "").startswith(f"{KUBERAY_DEPENDENCY['name']}-"):
            continue
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
            assert key in labels, f"{object_id(obj)} lacks label {key}"
        assert labels["app.kubernetes.io/name"] == "aimass"
        assert labels["app.kubernetes.io/instance"] == "aimass"


# --------------------------------------------------------------------------------------------
# schemas
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ALL)
def test_core_objects_match_the_kubernetes_schemas(render: Render, scenario: str) -> None:
    for obj in render(scenario):
        if not is_crd_kind(obj):
            validate_k8s(obj)


@pytest.mark.parametrize("scenario", ALL)
def test_ray_objects_match_the_kuberay_crds(render: Render, crd_validator: CrdValidator, scenario: str) -> None:
    ray_objects = [o for o in render(scenario) if api_group(o) == "ray.io"]
    assert ray_objects, "every scenario deploys at least the jobs RayCluster"
    errors = [e for obj in ray_objects for e in crd_validator.errors(obj)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("scenario", ALL)
def test_monitoring_objects_are_well_formed(render: Render, scenario: str) -> None:
    objects = [o for o in render(scenario) if api_group(o) == "monitoring.coreos.com"]
    errors = [e for obj in objects for e in monitoring_errors(obj)]
    assert not errors, "\n".join(errors)


def test_control_plane_monitor_scrapes_a_route_the_api_serves(render: Render) -> None:
    from aimass.api import ApiConfig, create_app

    (monitor,) = [o for o in of_kind(render("full"), "ServiceMonitor")
                  if o["metadata"]["labels"]["app.kubernetes.io/component"] == "control-plane"]
    (endpoint,) = monitor["spec"]["endpoints"]
    served = {r.path for r in create_app(ApiConfig(tokens={"t" * 32: "prometheus"})).routes}
    assert endpoint["path"] in served
    assert endpoint["authorization"]["credentials"] == {"name": "prod-prometheus-api-token", "key": "token"}


def test_monitoring_objects_only_when_enabled(render: Render) -> None:
    assert not [o for o in render("default") if api_group(o) == "monitoring.coreos.com"]
    kinds = sorted(o["kind"] for o in render("full") if api_group(o) == "monitoring.coreos.com")
    assert kinds == ["PodMonitor", "PrometheusRule", "ServiceMonitor", "ServiceMonitor"]
    rule = of_kind(render("full"), "PrometheusRule")[0]
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            expr = item["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert 'namespace="aimass"' in expr, f"{item['alert']} is not scoped to the release namespace"


def test_crd_conversion_rejects_unknown_fields_and_accepts_int_or_string(crd_validator: CrdValidator) -> None:
    """The CRD validator must be able to fail, or the Ray checks above prove nothing."""
    base = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "probe"},
        "spec": {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "h", "image": "i"}]}}}},
    }
    assert crd_validator.errors(base) == []
    typo = yaml.safe_load(yaml.safe_dump(base))
    typo["spec"]["headGroupSpec"]["serviceTyp"] = "ClusterIP"
    assert any("serviceTyp" in e for e in crd_validator.errors(typo))
    wrong_type = yaml.safe_load(yaml.safe_dump(base))
    wrong_type["spec"]["enableInTreeAutoscaling"] = "yes"
    assert crd_validator.errors(wrong_type)
    quantities = yaml.safe_load(yaml.safe_dump(base))
    quantities["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": 2, "memory": "4Gi"}
    }
    assert crd_validator.errors(quantities) == []
    bad_auth = yaml.safe_load(yaml.safe_dump(base))
    bad_auth["spec"]["authOptions"] = {"mode": "password"}
    assert crd_validator.errors(bad_auth)


# --------------------------------------------------------------------------------------------
# security baseline
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ALL)
def test_every_pod_is_restricted(render: Render, scenario: str) -> None:
    pods = [pod for obj in render(scenario) for pod in pod_specs(obj)]
    # Control plane, MLflow, helm test, Ray head and at least one worker group.
    assert len(pods) >= 5, [p.where for p in pods]
    problems = [f"{pod.where}: {p}" for pod in pods for p in restricted_violations(pod)]
    for obj in render(scenario):
        for spec in ray_cluster_specs(obj):
            problems += [f"{object_id(obj)}: {p}" for p in autoscaler_violations(spec)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scenario", ALL)
def test_pod_lists_have_unique_keys(render: Render, scenario: str) -> None:
    """The API server rejects duplicate volumes, mount paths and ports; duplicate env silently shadows."""
    problems = []
    for obj in render(scenario):
        for pod in pod_specs(obj):
            lists = {"volumes": [v["name"] for v in pod.spec.get("volumes", [])]}
            for c in containers(pod.spec):
                lists[f"{c['name']}.env"] = [e["name"] for e in c.get("env", [])]
                lists[f"{c['name']}.volumeMounts"] = [m["mountPath"] for m in c.get("volumeMounts", [])]
                lists[f"{c['name']}.ports"] = [p["containerPort"] for p in c.get("ports", [])]
            problems += [f"{pod.where} {key}: {items}" for key, items in lists.items() if len(items) != len(set(items))]
    assert not problems, "\n".join(problems)


def test_restricted_check_catches_violations() -> None:
    from _helm import PodTemplate

    pod = PodTemplate("probe", {"containers": [{"name": "c", "securityContext": {"runAsUser": 0}}]}, {})
    problems = "\n".join(restricted_violations(pod))
    for expected in ("runAsNonRoot", "runAsUser is 0", "allowPrivilegeEscalation", "readOnlyRootFilesystem",
                     "drop ALL", "seccompProfile", "/tmp"):
        assert expected in problems


@pytest.mark.parametrize("scenario", ALL)
def test_only_the_control_plane_and_ray_head_mount_an_api_token(render: Render, scenario: str) -> None:
    for obj in render(scenario):
        for pod in pod_specs(obj):
            component = pod.labels.get("app.kubernetes.io/component")
            mounts = pod.spec.get("automountServiceAccountToken")
            wants = component == "control-plane" or pod.labels.get("ray.io/node-type") == "head"
            assert mounts is wants, f"{pod.where}: automountServiceAccountToken={mounts}"


@pytest.mark.parametrize("scenario", ALL)
def test_rbac_is_least_privilege(render: Render, scenario: str) -> None:
    objects = render(scenario)
    roles = of_kind(objects, "Role") + of_kind(objects, "ClusterRole")
    for role in roles:
        for rule in role.get("rules", []):
            for key in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(key, []), f"{object_id(role)} has a wildcard in {key}: {rule}"
            assert "secrets" not in rule.get("resources", []), f"{object_id(role)} grants access to secrets"
            assert not rule.get("nonResourceURLs"), f"{object_id(role)} grants nonResourceURLs"
    for binding in of_kind(objects, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role", f"{object_id(binding)} binds a ClusterRole"
    control_plane = one(objects, "Role", "aimass-control-plane")
    granted = {
        (group, resource, verb)
        for rule in control_plane["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    expected = (
        {("ray.io", "rayjobs", v) for v in ("create", "get", "list", "watch", "delete", "patch")}
        | {("", "configmaps", v) for v in ("create", "get", "list", "delete")}
        | {("", "pods", v) for v in ("get", "list", "watch")}
        | {("", "pods/log", "get")}
    )
    assert granted == expected
    binding = one(objects, "RoleBinding", "aimass-control-plane")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "aimass-control-plane", "namespace": NAMESPACE}
    ]


SECRETISH_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|DSN|BACKEND_STORE_URI", re.I)


def _strings(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {s for v in node.values() for s in _strings(v)}
    if isinstance(node, list):
        return {s for v in node for s in _strings(v)}
    return {str(node)} if isinstance(node, str) and node else set()


@pytest.mark.parametrize("scenario", ALL)
def test_no_secret_value_is_inline(render: Render, scenario: str) -> None:
    objects = render(scenario)
    value_strings = _strings(scenario_values(scenario))
    # The chart creates no Secret except the generated password of the bundled PostgreSQL.
    for secret in of_kind(objects, "Secret"):
        assert secret["metadata"]["name"] == "aimass-postgresql", f"unexpected {object_id(secret)}"
        assert scenario_values(scenario)["postgresql"]["enabled"]
        assert not secret.get("stringData")
        assert set(secret["data"]) == {"password"}
        password = base64.b64decode(secret["data"]["password"]).decode()
        assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
        assert password not in value_strings
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for obj in objects:
        for pod in pod_specs(obj):
            for container in containers(pod.spec):
                for name, env in env_of(container).items():
                    if not SECRETISH_ENV.search(name) or name.endswith(("_FILE", "_PATH", "_SECRETS")):
                        continue
                    if "valueFrom" in env:
                        continue
                    # A DSN assembled from a secretKeyRef'd variable holds no secret itself.
                    value = env.get("value", "")
                    assert "$(POSTGRES_PASSWORD)" in value, f"{pod.where} {container['name']}: {name} is inline"
        for text in _strings(obj):
            for match in re.finditer(r"://([^/\s:@]+):([^/\s@]+)@", text):
                assert match.group(2) == "$(POSTGRES_PASSWORD)", f"{object_id(obj)} embeds credentials in a URL"


def test_generated_postgres_password_is_random_per_render(helm: Helm) -> None:
    def password() -> str:
        objects = helm.render(scenario_files("minimal"))
        return one(objects, "Secret", "aimass-postgresql")["data"]["password"]

    assert password() != password()


def test_values_never_hold_credentials() -> None:
    """Credential-like keys in values.yaml and the schema only ever *name* Secrets."""
    allowed = {
        "existingSecret", "existingSecretKey", "clientExistingSecret",
        "tlsSecretName", "secretName", "imagePullSecrets",
    }
    pattern = re.compile(r"password|token|secret|credential|accesskey|dsn", re.I)

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    for source in (yaml.safe_load((CHART_DIR / "values.yaml").read_text()), _schema()):
        offending = {k for k in keys(source) if pattern.search(k)} - allowed - {"definitions"}
        assert not offending, f"credential-like keys: {sorted(offending)}"


@pytest.mark.parametrize("scenario", ALL)
def test_ray_is_never_exposed(render: Render, scenario: str) -> None:
    objects = render(scenario)
    ray_pod_labels = [pod.labels for obj in objects if obj["kind"] in RAY_KINDS for pod in pod_specs(obj)]
    for service in of_kind(objects, "Service"):
        kind = service["spec"].get("type", "ClusterIP")
        assert kind == "ClusterIP", f"{object_id(service)} is a {kind}"
        selector = service["spec"].get("selector") or {}
        assert not any(k.startswith("ray.io/") for k in selector), f"{object_id(service)} selects Ray pods"
        assert not any(selector_matches({"matchLabels": selector}, labels) for labels in ray_pod_labels)
    for obj in objects:
        for spec in ray_cluster_specs(obj):
            head = spec["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", object_id(obj)
            assert head.get("enableIngress") is not True, object_id(obj)
            assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
            assert spec["authOptions"] == {"mode": "token"} or spec["authOptions"]["secretName"]
        if obj["kind"] == "RayService":
            assert obj["spec"].get("serveService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for ingress in of_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                name, port = backend["name"], backend["port"]
                assert not name.endswith("-head-svc"), f"{object_id(ingress)} routes to the Ray head"
                if name.endswith("-serve-svc"):
                    assert port == {"number": 8000}, f"{object_id(ingress)} routes to Ray port {port}"
                assert port.get("number") not in RAY_PRIVATE_PORTS, f"{object_id(ingress)} routes to port {port}"


# --------------------------------------------------------------------------------------------
# NetworkPolicy: default deny plus the allowed paths, evaluated
# --------------------------------------------------------------------------------------------

NAMESPACE_LABELS = {
    name: {"kubernetes.io/metadata.name": name}
    for name in (NAMESPACE, "kube-system", "ingress-nginx", "monitoring", "kuberay-system", "storage", "elsewhere")
}
S3_IP = "52.95.1.1"
API_SERVER_IP = {"default": "10.96.0.1", "minimal": "10.96.0.1", "gpu": "10.96.0.1",
                 "external": "10.0.0.1", "full": "172.20.0.1"}


def _pod_labels(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    return dict(pod_specs(one(objects, kind, name))[0].labels)


def _endpoints(objects: list[dict[str, Any]]) -> dict[str, Endpoint]:
    ray_cluster = one(objects, "RayCluster", "aimass-ray")
    ray_pods = {pod.labels.get("ray.io/node-type"): pod.labels for pod in pod_specs(ray_cluster)}
    pods = {
        "control-plane": _pod_labels(objects, "Deployment", "aimass-control-plane"),
        "mlflow": _pod_labels(objects, "Deployment", "aimass-mlflow"),
        "test": _pod_labels(objects, "Pod", "aimass-test-connection"),
        "ray-head": ray_pods["head"],
        "ray-worker": ray_pods["worker"],
        # A Ray pod of a RayJob's own cluster: only KubeRay's labels.
        "rayjob-worker": kuberay_pod_labels("run-1", "worker", "cpu", {}),
        # The submitter pod of a run, labelled as aimass/k8s/builders.py does.
        "rayjob-submitter": {
            "app.kubernetes.io/name": "aimass", "app.kubernetes.io/managed-by": "aimass",
            "app.kubernetes.io/component": "submitter", "aimass.io/run-id": "run-1",
        },
        # The bundled database's pod, or what it would be (nothing but MLflow may reach it).
        "postgresql": (
            _pod_labels(objects, "StatefulSet", "aimass-postgresql")
            if of_kind(objects, "StatefulSet")
            else {"app.kubernetes.io/name": "aimass", "app.kubernetes.io/instance": "aimass",
                  "app.kubernetes.io/component": "postgresql"}
        ),
        "stranger": {"app": "something-else"},
    }
    endpoints = {name: Endpoint(name, NAMESPACE, labels) for name, labels in pods.items()}
    endpoints |= {
        "dns": Endpoint("dns", "kube-system", {"k8s-app": "kube-dns"}),
        "ingress-controller": Endpoint(
            "ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}
        ),
        "prometheus": Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        "kuberay-operator": Endpoint(
            "kuberay-operator", "kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"}
        ),
        "foreign-pod": Endpoint("foreign-pod", "elsewhere", {"app.kubernetes.io/component": "control-plane"}),
        "s3": Endpoint("s3", ip=S3_IP),
        "internet": Endpoint("internet", ip="93.184.216.34"),
    }
    return endpoints


@pytest.mark.parametrize("scenario", ALL)
def test_default_deny_network_policy(render: Render, scenario: str) -> None:
    policies = of_kind(render(scenario), "NetworkPolicy")
    deny_all = [
        p for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    assert len(deny_all) == 1, "expected exactly one default-deny (ingress+egress) NetworkPolicy"


@pytest.mark.parametrize("scenario", ALL)
def test_network_paths(render: Render, scenario: str) -> None:
    objects = render(scenario)
    values = scenario_values(scenario)
    policies = of_kind(objects, "NetworkPolicy")
    ep = _endpoints(objects)
    api_server = Endpoint("api-server", ip=API_SERVER_IP[scenario])
    s3_port = values["networkPolicy"]["s3"]["ports"][0]
    bundled_pg = values["postgresql"]["enabled"]
    cp_ingress = values["controlPlane"]["ingress"]["enabled"]
    serve_ingress = values["serving"]["enabled"] and values["serving"]["ingress"]["enabled"]
    monitoring = values["monitoring"]["serviceMonitor"]["enabled"]
    ray_storage = bool(values["ray"]["storage"]["artifactRoot"])
    # Empty peer lists mean "any address on these ports" (documented in values.yaml).
    api_anywhere = not values["networkPolicy"]["kubeAPIServer"]["to"]
    s3_anywhere = not values["networkPolicy"]["s3"]["to"]

    def allowed(src: str | Endpoint, dst: str | Endpoint, port: int, protocol: str = "TCP") -> bool:
        src_ep = ep[src] if isinstance(src, str) else src
        dst_ep = ep[dst] if isinstance(dst, str) else dst
        return traffic_allowed(policies, src_ep, dst_ep, port, protocol, NAMESPACE_LABELS)

    s3_peer = (
        Endpoint("minio", "storage", {"app.kubernetes.io/name": "minio"}) if scenario == "external" else ep["s3"]
    )
    expectations: list[tuple[str | Endpoint, str | Endpoint, int, bool]] = [
        # allowed paths
        ("control-plane", "mlflow", 5000, True),
        ("ray-head", "mlflow", 5000, True),
        ("ray-worker", "mlflow", 5000, True),
        ("rayjob-worker", "mlflow", 5000, True),
        ("ray-worker", "ray-head", 6379, True),
        ("ray-head", "ray-worker", 12345, True),
        ("rayjob-worker", "ray-head", 6379, True),
        ("rayjob-submitter", "ray-head", 8265, True),
        ("kuberay-operator", "ray-head", 8265, True),
        ("kuberay-operator", "ray-head", 52365, True),
        ("test", "control-plane", 8080, True),
        ("test", "mlflow", 5000, True),
        ("control-plane", api_server, 443, True),
        ("ray-head", api_server, 443, True),
        ("mlflow", s3_peer, s3_port, True),
        # denied paths
        ("control-plane", "ray-head", 8265, False),
        ("control-plane", "ray-head", 6379, False),
        ("mlflow", "ray-head", 8265, False),
        ("ray-worker", api_server, 443, ray_storage and s3_anywhere),
        ("ingress-controller", "ray-head", 8265, False),
        ("ingress-controller", "ray-head", 6379, False),
        ("ingress-controller", "ray-head", 10001, False),
        ("ingress-controller", "mlflow", 5000, values["mlflow"]["ingress"]["enabled"]),
        ("stranger", "ray-head", 8265, False),
        ("stranger", "mlflow", 5000, False),
        ("stranger", "control-plane", 8080, False),
        ("foreign-pod", "mlflow", 5000, False),
        ("foreign-pod", "ray-head", 10001, False),
        ("ray-worker", "postgresql", 5432, False),
        ("control-plane", "internet", 80, False),
        ("mlflow", "internet", 80, False),
        ("ray-head", "internet", 443, api_anywhere or (ray_storage and s3_anywhere)),
        ("ray-worker", "internet", 443, ray_storage and s3_anywhere),
        ("ray-worker", s3_peer, s3_port, ray_storage),
        ("rayjob-submitter", "mlflow", 5000, False),
        # paths that depend on the scenario
        ("ingress-controller", "control-plane", 8080, cp_ingress),
        ("ingress-controller", "ray-worker", 8000, serve_ingress),
        ("prometheus", "control-plane", 8080, monitoring),
        ("prometheus", "ray-worker", 8080, monitoring),
        ("prometheus", "mlflow", 5000, monitoring),
        ("mlflow", "postgresql", 5432, bundled_pg),
    ]
    for name in ("control-plane", "mlflow", "ray-head", "ray-worker", "test", "postgresql"):
        expectations.append((name, "dns", 53, True))
    if not bundled_pg:
        external_pg = Endpoint("db", ip="10.20.0.5" if scenario == "external" else "10.1.2.3")
        expectations.append(("mlflow", external_pg, 5432, True))
    if scenario == "external":
        expectations.append(("mlflow", "s3", 443, False))  # egress narrowed to the MinIO peers

    wrong = [
        f"{getattr(src, 'name', src)} -> {getattr(dst, 'name', dst)}:{port} should be {'allowed' if want else 'denied'}"
        for src, dst, port, want in expectations
        if allowed(src, dst, port) is not want
    ]
    assert allowed("control-plane", "dns", 53, "UDP")
    assert not wrong, "\n".join(wrong)


def test_kuberay_operator_subchart_follows_its_condition(helm: Helm, render: Render) -> None:
    def from_subchart(objects: list[dict[str, Any]]) -> list[str]:
        return [
            object_id(o) for o in objects
            if o["metadata"].get("labels", {}).get("helm.sh/chart", "").startswith("kuberay-operator-")
        ]

    assert from_subchart(render("default")) == []
    enabled = helm.render(set_values=["kuberay-operator.enabled=true"])
    assert from_subchart(enabled)
    policy = one(enabled, "NetworkPolicy", "aimass-kuberay-operator")
    assert policy["spec"]["policyTypes"] == ["Egress"]
    ray_policy = one(enabled, "NetworkPolicy", "aimass-ray")
    operator_peers = [
        peer for rule in ray_policy["spec"]["ingress"] for peer in rule["from"] if "namespaceSelector" in peer
    ]
    release_namespace = {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert release_namespace in [p["namespaceSelector"] for p in operator_peers]


# --------------------------------------------------------------------------------------------
# values.schema.json and values.yaml
# --------------------------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    import json

    return json.loads((CHART_DIR / "values.schema.json").read_text())


@pytest.mark.parametrize(
    ("set_value", "message"),
    [
        ("bogusKey=1", "additional properties 'bogusKey' not allowed"),
        ("mlflow.auth.bogus=true", "additional properties 'bogus' not allowed"),
        ("ray.workers.replica=1", "additional properties 'replica' not allowed"),
        ("networkPolicy.dns.podSelector.matchLabel.x=y", "additional properties 'matchLabel' not allowed"),
        ("controlPlane.replicaCount=two", "want integer"),
        ("mlflow.auth.enabled=maybe", "want boolean"),
        ("mlflow.auth.defaultPermission=ALL", "defaultPermission"),
        ("securityContext.runAsUser=0", "runAsUser"),
        ("controlPlane.ingress.host=Not_A_Host", "host"),
        ("ray.autoscaler.upscalingMode=Fast", "upscalingMode"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, set_value: str, message: str) -> None:
    proc = helm.template(set_values=[set_value], check=False)
    assert proc.returncode != 0, f"--set {set_value} rendered"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("scenario", ALL)
def test_schema_is_valid_draft7_and_accepts_every_scenario(scenario: str) -> None:
    """Draft-07 so every Helm 3.8+/4 validator reads it the same way."""
    import jsonschema

    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(scenario_values(scenario)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_closes_every_object() -> None:
    """additionalProperties: false at every level except the documented pass-through objects."""
    opaque = {"#/definitions/opaqueObject", "#/definitions/stringMap", "#/definitions/rayStartParams",
              "#/properties/global", "#/properties/serving/properties/config", "#/properties/kuberay-operator"}
    problems: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" and path not in opaque:
            if node.get("additionalProperties") is not False:
                problems.append(f"{path} accepts unknown keys")
        for key in ("properties", "definitions"):
            for name, sub in (node.get(key) or {}).items():
                walk(sub, f"{path}/{key}/{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}/items")

    walk(_schema(), "#")
    assert not problems, "\n".join(problems)


@dataclass(frozen=True)
class ValuesKey:
    path: str  # dotted, e.g. "mlflow.auth.enabled"
    line: int
    documented: bool  # a "# -- description" comment block sits right above it
    section: bool  # a mapping of further settings (the schema lists its properties)


def _values_keys() -> list[ValuesKey]:
    """Every key of values.yaml down through the sections the schema types, in file order.

    Keys inside pass-through objects (resources, affinity, serving.config, ...) are part of a
    value, not settings of their own, and are not listed.
    """
    text = (CHART_DIR / "values.yaml").read_text()
    lines = text.splitlines()
    schema = _schema()

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        return node

    def documented(line: int) -> bool:
        cursor = line - 1
        while cursor >= 0 and lines[cursor].strip().startswith("#"):
            comment = lines[cursor].strip()
            if comment.startswith("# -- ") and len(comment) > len("# -- ") + 3:
                return True
            cursor -= 1
        return False

    found: list[ValuesKey] = []

    def walk(mapping: yaml.MappingNode, node_schema: dict[str, Any], prefix: str) -> None:
        for key_node, value_node in mapping.value:
            key = key_node.value
            sub_schema = resolve(node_schema.get("properties", {}).get(key, {}))
            section = isinstance(value_node, yaml.MappingNode) and "properties" in sub_schema
            line = key_node.start_mark.line
            found.append(ValuesKey(f"{prefix}{key}", line + 1, documented(line), section))
            if section:
                walk(value_node, sub_schema, f"{prefix}{key}.")

    walk(yaml.compose(text), schema, "")
    return found


def _under(path: str, ancestors: set[str]) -> bool:
    return any(path.startswith(f"{a}.") for a in ancestors)


def test_every_value_has_a_helm_docs_comment() -> None:
    """helm-docs rules: every value has a "# -- " comment; one on a section documents it whole."""
    keys = _values_keys()
    documented_whole = {k.path for k in keys if k.documented and k.section}
    missing = [
        f"values.yaml:{k.line}: {k.path}"
        for k in keys
        if not k.documented and not k.section and not _under(k.path, documented_whole)
    ]
    assert not missing, "keys without a '# -- description' comment right above them:\n" + "\n".join(missing)


def test_values_yaml_and_schema_describe_the_same_keys() -> None:
    schema = _schema()
    keys = _values_keys()
    documented_whole = {k.path for k in keys if k.documented and k.section}
    in_values = {k.path for k in keys if not _under(k.path, documented_whole)}

    def schema_keys(node: dict[str, Any], prefix: str) -> set[str]:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        found = set()
        for name, sub in (node.get("properties") or {}).items():
            path = f"{prefix}{name}"
            if name == "global" or _under(path, documented_whole):
                continue  # helm's own globals; parts of a value documented as a whole
            found.add(path)
            found |= schema_keys(sub, f"{path}.")
        return found

    accepted = schema_keys(schema, "")
    assert in_values == accepted, (
        f"in values.yaml only: {sorted(in_values - accepted)}; in the schema only: {sorted(accepted - in_values)}"
    )


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        (["controlPlane.auth.existingSecret="], "controlPlane.auth.existingSecret is required"),
        (["mlflow.backendStore.existingSecret="], "mlflow.backendStore.existingSecret is required"),
        (["mlflow.artifacts.s3.existingSecret="], "mlflow.artifacts.s3.existingSecret is required"),
        (["mlflow.artifacts.s3.bucket="], "mlflow.artifacts.s3.bucket is required"),
        (["mlflow.auth.existingSecret="], "mlflow.auth.existingSecret is required"),
        (["mlflow.auth.clientExistingSecret="], "mlflow.auth.clientExistingSecret is required"),
        (["serving.enabled=true", "serving.auth.existingSecret="], "serving.auth.existingSecret is required"),
        (["controlPlane.serviceAccount.create=false"], "controlPlane.serviceAccount.name is required"),
        (["serving.enabled=true", "serving.config.auth.mode=none"], "auth.mode none (local mode) is refused in a cluster"),
    ],
)
def test_missing_required_secret_fails_clearly(helm: Helm, set_values: list[str], message: str) -> None:
    proc = helm.template(set_values=set_values, check=False)
    assert proc.returncode != 0, f"rendered without {set_values}"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "set_values",
    [
        ["postgresql.enabled=true", "mlflow.backendStore.existingSecret="],
        ["mlflow.artifacts.s3.useWorkloadIdentity=true", "mlflow.artifacts.s3.existingSecret="],
        ["mlflow.auth.enabled=false", "mlflow.auth.existingSecret=", "mlflow.auth.clientExistingSecret="],
        ["serving.enabled=false", "serving.auth.existingSecret="],
    ],
)
def test_secrets_are_only_required_where_used(helm: Helm, set_values: list[str]) -> None:
    assert helm.render(set_values=set_values)


# --------------------------------------------------------------------------------------------
# the contract with the Python side
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ALL)
def test_control_plane_contract(render: Render, scenario: str) -> None:
    """What aimass.api / aimass.orchestrator.executors.kubernetes read from the environment."""
    objects = render(scenario)
    values = scenario_values(scenario)
    pod = one(objects, "Deployment", "aimass-control-plane")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["aimass", "api", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = env_of(container)
    head = one(objects, "RayCluster", "aimass-ray")["spec"]["headGroupSpec"]["template"]["spec"]
    assert env["AIMASS_API_TOKEN_FILE"]["value"] == "/var/run/aimass/api-token/token"
    assert env["AIMASS_TRACKING_URI"]["value"] == "http://aimass-mlflow:5000"
    assert env["AIMASS_K8S_NAMESPACE"]["value"] == NAMESPACE
    assert env["AIMASS_RAY_IMAGE"]["value"] == head["containers"][0]["image"]
    assert env["AIMASS_K8S_SERVICE_ACCOUNT"]["value"] == head["serviceAccountName"] == "aimass-ray"
    assert env["AIMASS_K8S_RAY_CLUSTER"]["value"] == "aimass-ray"  # runs go to the chart's RayCluster
    run_secrets = [values["mlflow"]["auth"]["clientExistingSecret"]]
    if values["ray"]["storage"]["existingSecret"]:
        run_secrets.append(values["ray"]["storage"]["existingSecret"])
    assert env["AIMASS_K8S_ENV_FROM_SECRETS"]["value"] == ",".join(run_secrets)
    if values["imagePullSecrets"]:
        assert env["AIMASS_K8S_IMAGE_PULL_SECRETS"]["value"] == ",".join(values["imagePullSecrets"])
    if values["ray"]["storage"]["artifactRoot"]:
        assert env["AIMASS_ARTIFACT_ROOT"]["value"] == values["ray"]["storage"]["artifactRoot"]
    # The control plane needs no cloud credentials: runs get theirs through envFrom.
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": values["mlflow"]["auth"]["clientExistingSecret"], "key": "MLFLOW_TRACKING_PASSWORD",
    }
    mount = {m["name"]: m for m in container["volumeMounts"]}["api-token"]
    assert mount["mountPath"] == "/var/run/aimass/api-token" and mount["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}["api-token"]["secret"]
    assert volume["secretName"] == values["controlPlane"]["auth"]["existingSecret"]
    assert volume["items"] == [{"key": "token", "path": "token"}]
    service = one(objects, "Service", "aimass-control-plane")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_runs_get_their_own_clusters_when_asked(helm: Helm) -> None:
    for set_values in (["ray.cluster.runPipelines=false"], ["ray.cluster.enabled=false"]):
        objects = helm.render(set_values=set_values)
        (container,) = one(objects, "Deployment", "aimass-control-plane")["spec"]["template"]["spec"]["containers"]
        assert "AIMASS_K8S_RAY_CLUSTER" not in env_of(container), set_values


@pytest.mark.parametrize("scenario", ALL)
def test_mlflow_contract(render: Render, scenario: str) -> None:
    objects = render(scenario)
    values = scenario_values(scenario)
    pod = one(objects, "Deployment", "aimass-mlflow")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "mlflow")
    command = container["command"] + container["args"]
    assert command[:4] == ["mlflow", "server", "--backend-store-uri", "$(MLFLOW_BACKEND_STORE_URI)"]
    s3 = values["mlflow"]["artifacts"]["s3"]
    flags = dict(zip(command, command[1:], strict=False))  # each flag -> the word after it
    assert flags["--artifacts-destination"] == f"s3://{s3['bucket']}/{s3['prefix']}"
    assert "--serve-artifacts" in command
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "5000"
    hosts = flags["--allowed-hosts"].split(",")
    assert "aimass-mlflow:*" in hosts and "localhost:*" in hosts and "*" not in hosts
    assert ("--app-name" in command) is values["mlflow"]["auth"]["enabled"]
    if values["mlflow"]["auth"]["enabled"]:
        assert flags["--app-name"] == "basic-auth"
        init_env = env_of(pod["initContainers"][0])
        for name, key in (("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password")):
            ref = init_env[name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": values["mlflow"]["auth"]["existingSecret"], "key": key}
        csrf_key = env_of(container)["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
        assert csrf_key["key"] == "flask-secret-key"
    env = env_of(container)
    if values["postgresql"]["enabled"]:
        assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://mlflow:$(POSTGRES_PASSWORD)@aimass-postgresql:5432/")
        assert one(objects, "StatefulSet", "aimass-postgresql")
    else:
        ref = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": values["mlflow"]["backendStore"]["existingSecret"],
                       "key": values["mlflow"]["backendStore"]["existingSecretKey"]}
        assert not of_kind(objects, "StatefulSet")
    if s3["useWorkloadIdentity"]:
        assert "AWS_ACCESS_KEY_ID" not in env
    else:
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == s3["existingSecret"]
    service = one(objects, "Service", "aimass-mlflow")
    assert service["spec"]["ports"][0]["port"] == 5000


def test_mlflow_auth_renderer_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The init container's script writes a file MLflow's own reader parses back unchanged."""
    import configparser
    import runpy

    target = tmp_path / "basic_auth.ini"
    env = {
        "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ",
        "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:p%40ss@db:5432/mlflow",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "100%-not-password1234",
        "MLFLOW_AUTH_CONFIG_PATH": str(target),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runpy.run_path(str(CHART_DIR / "files" / "render_mlflow_auth_config.py"), run_name="__main__")
    assert target.stat().st_mode & 0o077 == 0, "the file holding the admin password must be private"
    parsed = configparser.ConfigParser()  # interpolating, like mlflow.server.auth.config
    parsed.read(target)
    section = parsed["mlflow"]
    assert section["database_uri"] == env["MLFLOW_BACKEND_STORE_URI"]
    assert section["admin_password"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert section["default_permission"] == "READ"


@pytest.mark.parametrize("scenario", ALL)
def test_ray_cluster_contract(render: Render, scenario: str) -> None:
    objects = render(scenario)
    values = scenario_values(scenario)
    cluster = one(objects, "RayCluster", "aimass-ray")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == values["ray"]["autoscaler"]["idleTimeoutSeconds"]
    assert cluster["rayVersion"] == values["ray"]["version"]
    assert cluster["authOptions"]["mode"] == "token"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = values["ray"]["gpuWorkers"]
    assert set(groups) == {"cpu"} | ({gpu["groupName"]} if gpu["enabled"] else set())
    for group in groups.values():
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        if group["groupName"] == gpu["groupName"]:
            assert limits["nvidia.com/gpu"] == gpu["gpusPerWorker"]
            assert group["rayStartParams"]["num-gpus"] == str(gpu["gpusPerWorker"])
            tolerations = group["template"]["spec"]["tolerations"]
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
        else:
            assert "nvidia.com/gpu" not in limits
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_gpu_scenario_has_a_gpu_group_and_defaults_do_not(render: Render) -> None:
    def gpus(name: str) -> list[Any]:
        cluster = one(render(name), "RayCluster", "aimass-ray")["spec"]
        return [
            g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for g in cluster["workerGroupSpecs"]
        ]

    assert gpus("default") == [None]
    assert gpus("gpu") == [None, 1]
    assert gpus("full") == [None, 2]


def test_serving_config_is_passed_through_as_the_app_args(render: Render) -> None:
    from aimass.serving.config import ServeConfig, to_serve_config_v2

    objects = render("full")
    service = one(objects, "RayService", "aimass-serve")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    values = scenario_values("full")["serving"]["config"]
    assert serve_config["applications"][0]["args"] == values  # untouched: the app validates it in the cluster
    # The same document `aimass serve` / build_rayservice generate from that config (args compared as parsed).
    expected = to_serve_config_v2(values)
    for doc in (serve_config, expected):
        doc["applications"][0]["args"] = ServeConfig.model_validate(doc["applications"][0]["args"])
    assert serve_config == expected
    for pod in pod_specs(service):
        (container,) = pod.spec["containers"]
        assert env_of(container)["AIMASS_SERVE_TOKEN_FILE"]["value"] == "/var/run/aimass/serve-token/token"
        # Serve's high-throughput mode on every serving node (serving.highThroughput, on by default)
        assert env_of(container)["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        assert env_of(container)["RAY_SERVE_THROUGHPUT_OPTIMIZED"]["value"] == "1"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["serve-token"] == "/var/run/aimass/serve-token"
        volume = {v["name"]: v for v in pod.spec["volumes"]}["serve-token"]
        assert volume["secret"]["secretName"] == "prod-serve-token"
    ingress = one(objects, "Ingress", "aimass-serve")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "aimass-serve-serve-svc", "port": {"number": 8000}}
    assert not of_kind(render("default"), "RayService")


def test_serving_high_throughput_mode_can_be_turned_off(helm: Helm) -> None:
    objects = helm.render(values_files=scenario_files("full"), set_values=["serving.highThroughput=false"])
    service = one(objects, "RayService", "aimass-serve")
    for pod in pod_specs(service):
        (container,) = pod.spec["containers"]
        assert not [k for k in env_of(container) if k.startswith("RAY_SERVE_")]


@pytest.mark.parametrize("scenario", ALL)
def test_helm_test_hook_checks_api_and_mlflow(render: Render, scenario: str) -> None:
    pod = one(render(scenario), "Pod", "aimass-test-connection")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "http://aimass-control-plane:8080/readyz" in script
    assert "http://aimass-mlflow:5000/health" in script


@pytest.mark.parametrize("scenario", ALL)
def test_notes_print_the_next_commands(helm: Helm, scenario: str) -> None:
    values = scenario_values(scenario)
    notes = helm.notes(scenario_files(scenario))
    assert "pod-security.kubernetes.io/enforce=restricted" in notes
    token_secret = values["controlPlane"]["auth"]["existingSecret"]
    assert f"get secret {token_secret} -o jsonpath='{{.data.token}}'" in notes
    assert 'aimass submit pipelines/quickstart.yaml --to api --api-url "$AIMASS_API_URL"' in notes
    assert (REPO_ROOT / "pipelines" / "quickstart.yaml").is_file(), "NOTES submit a pipeline that must exist"
    if values["mlflow"]["ingress"]["enabled"]:
        assert f"https://{values['mlflow']['ingress']['host']}/" in notes
    else:
        assert "kubectl -n aimass port-forward svc/aimass-mlflow 5000:5000" in notes
    if values["controlPlane"]["ingress"]["enabled"]:
        assert f"export AIMASS_API_URL=https://{values['controlPlane']['ingress']['host']}" in notes
    else:
        assert "kubectl -n aimass port-forward svc/aimass-control-plane 8080:8080" in notes
    assert f"helm test aimass -n {NAMESPACE}" in notes


# --------------------------------------------------------------------------------------------
# k8s/ samples
# --------------------------------------------------------------------------------------------


def test_samples_are_present_and_listed() -> None:
    names = {path.name for path in SAMPLE_FILES}
    assert {"rayjob.pipeline.yaml", "rayservice.model.yaml", "namespace.setup.yaml"} <= names
    readme = (SAMPLES_DIR / "README.md").read_text()
    for name in names:
        assert re.fullmatch(r"[a-z]+\.[a-z-]+\.yaml", name), f"{name} is not <kind>.<variant>.yaml"
        assert name in readme, f"k8s/README.md does not list {name}"


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_sample_validates(path: Path, crd_validator: CrdValidator) -> None:
    objects = load_manifests(path.read_text())
    assert objects
    errors: list[str] = []
    for obj in objects:
        if api_group(obj) == "ray.io":
            errors += crd_validator.errors(obj)
        else:
            validate_k8s(obj)
        for pod in pod_specs(obj):
            errors += [f"{pod.where}: {p}" for p in restricted_violations(pod)]
        for spec in ray_cluster_specs(obj):
            errors += [f"{object_id(obj)}: {p}" for p in autoscaler_violations(spec)]
            assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
            assert spec.get("authOptions", {}).get("mode") == "token"
        assert obj["kind"] != "Secret", f"{path.name} must not carry a Secret"
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_sample_fields_are_commented(path: Path) -> None:
    """Every key line outside block scalars carries a comment, above it or at its end."""
    lines = path.read_text().splitlines()
    uncommented = []
    block_indent: int | None = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if stripped and indent <= block_indent:
                block_indent = None
            else:
                continue  # inside a `|` block scalar: embedded documents, not fields
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        key = re.match(r"^(- )?([A-Za-z0-9_./-]+):", stripped)
        if key is None:
            continue
        if re.search(r":\s*[|>][-+]?\s*(#.*)?$", stripped):
            block_indent = indent
        has_comment = "#" in stripped or lines[number - 2].strip().startswith("#")
        # Short structural keys (`metadata:`, `spec:`, `labels:` ...) may be explained by their children.
        structural = stripped.endswith(":") and key.group(2) in {
            "metadata", "spec", "labels", "template", "env", "valueFrom", "secretKeyRef", "seccompProfile",
            "capabilities", "matchLabels", "requests", "limits", "hard", "data", "items",
        }
        if not has_comment and not structural:
            uncommented.append(f"{path.name}:{number}: {stripped}")
    assert not uncommented, "\n".join(uncommented)


def test_validators_reject_what_they_should() -> None:
    """The schema checks above are only worth something if they can fail."""
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe"},
        "spec": {"ports": [{"port": 80}], "tpye": "ClusterIP"},
    }
    with pytest.raises(AssertionError, match="tpye"):
        validate_k8s(service)
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "probe"},
        "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "30s"}]},
    }
    assert any("intervall" in e for e in monitoring_errors(monitor))
