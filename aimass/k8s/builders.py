"""Build the Kubernetes objects that run a pipeline on a cluster: a ConfigMap and a KubeRay RayJob.

The objects are plain dicts (what ``kubectl apply`` would read), validated in the tests against the
KubeRay v1.7 CRD schemas and the Kubernetes schemas. Design:

* The pipeline spec travels in a ConfigMap (``pipeline.yaml``), mounted read-only into the RayJob's
  *submitter* pod at ``/etc/aimass/pipeline``. The submitter runs ``ray job submit`` with
  ``runtimeEnvYAML: {working_dir: /etc/aimass/pipeline}``, so Ray uploads the spec to the cluster and
  the driver finds it as ``pipeline.yaml`` in its working directory. This works both for a fresh
  cluster per run and for an existing RayCluster (``clusterSelector``), and is exactly what the Ray
  Jobs backend does, so a spec behaves the same everywhere.
* The entrypoint is an allowlisted argv (``aimass run pipeline.yaml --run-id <id>``), each token
  shell-quoted; no user string is ever put into it.
* Every pod is Pod-Security "restricted": non-root, read-only root filesystem (``emptyDir`` at
  ``/tmp`` and ``/dev/shm``), no privilege escalation, all capabilities dropped, seccomp
  ``RuntimeDefault``, no service-account token unless asked for.
* Ray token authentication is on (``authOptions.mode: token``; KubeRay generates the Secret and
  injects it into the head, workers and submitter). The head Service stays ``ClusterIP`` and no
  ingress is created: the dashboard, Jobs API and GCS are never exposed outside the cluster.
* ``shutdownAfterJobFinishes: true`` with ``ttlSecondsAfterFinished``, an ``activeDeadlineSeconds``
  and a ``backoffLimit``; the submitter runs in ``K8sJobMode`` so its pod holds the driver's logs.
* Secrets are referenced (``secretKeyRef``/``envFrom``), never inlined.

Example:
    >>> cm = build_configmap(spec, "20250101-120000-abc123", "ml")
    >>> job = build_rayjob(spec, "20250101-120000-abc123", "ml", image="ghcr.io/acme/aimass:0.1.0",
    ...                    configmap_name=cm["metadata"]["name"])
    >>> job["spec"]["entrypoint"]
    'aimass run pipeline.yaml --run-id 20250101-120000-abc123'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from aimass.exceptions import InvalidRequestError
from aimass.k8s.image import DEFAULT_IMAGE
from aimass.orchestrator.executors.base import build_entrypoint, check_run_id, entrypoint_string

if TYPE_CHECKING:  # pragma: no cover
    from aimass.spec import PipelineSpec

__all__ = [
    "RAY_GROUP", "RAY_VERSION_API", "RAYJOB_PLURAL", "RAYSERVICE_PLURAL", "MANAGED_BY", "LABEL_MANAGED_BY",
    "LABEL_RUN_ID", "LABEL_PIPELINE", "LABEL_OWNER", "LABEL_COMPONENT", "ANNOTATION_OWNER", "SPEC_MOUNT_PATH", "SPEC_FILE",
    "MAX_RAYJOB_NAME", "SecretEnv", "ClusterShape", "rayjob_name", "configmap_name", "owner_label_value",
    "build_configmap", "build_rayjob", "build_rayservice", "pod_security_context", "container_security_context",
    "default_ray_version", "check_labels",
]

RAY_GROUP = "ray.io"
RAY_VERSION_API = "v1"
RAYJOB_PLURAL = "rayjobs"
RAYSERVICE_PLURAL = "rayservices"
MANAGED_BY = "aimass"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_RUN_ID = "aimass.io/run-id"
LABEL_PIPELINE = "aimass.io/pipeline"
LABEL_OWNER = "aimass.io/owner"
ANNOTATION_OWNER = "aimass.io/owner"
SPEC_MOUNT_PATH = "/etc/aimass/pipeline"
SPEC_FILE = "pipeline.yaml"
MAX_RAYJOB_NAME = 47  # KubeRay's MaxRayJobNameLength; the name must also be a DNS-1035 label
MAX_CONFIGMAP_BYTES = 1_000_000  # etcd's object limit is ~1.5 MiB; a spec is far smaller

_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_USER_LABEL_KEY_RE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY$|^KEY$|ACCESS_KEY", re.I)
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def default_ray_version() -> str:
    """The Ray version installed here (the image must carry the same one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:  # pragma: no cover
        return "2.60.0"


def rayjob_name(run_id: str) -> str:
    """``aimass-<run id>``: a DNS-1035 label of at most 47 characters (KubeRay's limit)."""
    name = f"aimass-{check_run_id(run_id)}"
    assert len(name) <= MAX_RAYJOB_NAME
    return name


def configmap_name(run_id: str) -> str:
    return f"{rayjob_name(run_id)}-spec"


def owner_label_value(owner: str | None) -> str:
    """An identity squeezed into a label value (the full identity goes in an annotation)."""
    if not owner:
        return ""
    v = re.sub(r"[^A-Za-z0-9_.-]", "_", owner)[:63].strip("-_.")
    return v


def check_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """User labels: unprefixed keys only (so ``aimass.io/`` and ``app.kubernetes.io/`` stay ours)."""
    labels = dict(labels or {})
    if len(labels) > 16:
        raise InvalidRequestError("too many labels", got=len(labels), fix="Use at most 16 labels.")
    for k, v in labels.items():
        if not isinstance(k, str) or not _USER_LABEL_KEY_RE.match(k):
            raise InvalidRequestError("invalid label key", got=k,
                                      fix="Use at most 63 lowercase letters, digits, '-', '_' or '.', without a prefix.")
        if not isinstance(v, str) or not _LABEL_VALUE_RE.match(v):
            raise InvalidRequestError(f"invalid value for label {k!r}", got=v,
                                      fix="Use at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit.")
    return labels


def _check_name(kind: str, name: str) -> str:
    if not _K8S_NAME_RE.match(name or ""):
        raise InvalidRequestError(f"invalid {kind} name", got=name, fix="Use lowercase letters, digits, '-' and '.'.")
    return name


def _check_quantity(what: str, q: str) -> str:
    if not _QUANTITY_RE.match(str(q)):
        raise InvalidRequestError(f"invalid {what} quantity", got=q, fix="Use a Kubernetes quantity such as 500m, 2 or 4Gi.")
    return str(q)


def _cpu_cores(q: str) -> float:
    """A CPU quantity (``2``, ``500m``) in cores."""
    q = _check_quantity("cpu", q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


# --- pod security -----------------------------------------------------------------------------
def pod_security_context(run_as_user: int = 1000, run_as_group: int = 100) -> dict[str, Any]:
    """Pod-level settings of the Pod Security "restricted" profile (uid 1000 is ``ray`` in Ray images)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_group,
        "fsGroup": run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable read from a Secret key (never an inline value)."""

    secret: str
    key: str


@dataclass
class ClusterShape:
    """The RayCluster created for one run (ignored with an existing cluster).

    Attributes:
        head_cpu / head_memory: the head pod (the driver runs there).
        workers: worker pods (0 = everything on the head).
        worker_cpu / worker_memory / worker_gpu: one worker pod.
        tmp_size / shm_size: sizes of the writable ``/tmp`` and ``/dev/shm`` volumes.
    """

    head_cpu: str = "2"
    head_memory: str = "4Gi"
    workers: int = 1
    worker_cpu: str = "2"
    worker_memory: str = "4Gi"
    worker_gpu: int = 0
    tmp_size: str = "10Gi"
    shm_size: str = "2Gi"
    node_selector: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_pipeline(cls, spec: "PipelineSpec", max_workers: int = 16, **overrides: Any) -> "ClusterShape":
        """Size the worker group from the pipeline: the widest train/tune step decides."""
        need_workers, cpus_per_worker, gpu = 0, 1.0, False
        for step in spec.steps:
            cfg = step.config or {}
            n = cfg.get("numWorkers", cfg.get("num_workers"))
            if isinstance(n, int) and not isinstance(n, bool):
                need_workers = max(need_workers, n)
            c = cfg.get("cpusPerWorker", cfg.get("cpus_per_worker"))
            if isinstance(c, (int, float)) and not isinstance(c, bool):
                cpus_per_worker = max(cpus_per_worker, float(c))
            gpu = gpu or bool(cfg.get("useGpu", cfg.get("use_gpu"))) or step.resources.gpu > 0
        shape = cls(**overrides)
        if "workers" not in overrides:
            if gpu:
                shape.workers = min(max_workers, max(1, need_workers))
                shape.worker_gpu = max(shape.worker_gpu, 1)
            else:
                per_pod = max(1.0, _cpu_cores(shape.worker_cpu))
                shape.workers = min(max_workers, math.ceil(need_workers * cpus_per_worker / per_pod)) if need_workers else 0
        return shape


def _volumes(shape: ClusterShape) -> list[dict[str, Any]]:
    return [
        {"name": "tmp", "emptyDir": {"sizeLimit": shape.tmp_size}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shape.shm_size}},
    ]


_MOUNTS = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]


def _env_list(env: dict[str, str] | None, secret_env: dict[str, SecretEnv] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},  # the root filesystem is read-only
        {"name": "AIMASS_HOME", "value": "/tmp/aimass"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    for name, value in sorted((env or {}).items()):
        if not _ENV_NAME_RE.match(name):
            raise InvalidRequestError("invalid environment variable name", got=name, fix="Use A-Z, 0-9 and '_'.")
        if _SECRETISH.search(name):
            raise InvalidRequestError(f"{name} looks like a secret and must not be set inline",
                                      fix="Put it in a Secret and pass it as secret_env (or envFrom a Secret).")
        out.append({"name": name, "value": str(value)})
    for name, ref in sorted((secret_env or {}).items()):
        if not _ENV_NAME_RE.match(name):
            raise InvalidRequestError("invalid environment variable name", got=name, fix="Use A-Z, 0-9 and '_'.")
        out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": _check_name("Secret", ref.secret), "key": ref.key}}})
    return out


def _pod_template(*, component: str, run_labels: dict[str, str], container: dict[str, Any], volumes: list[dict[str, Any]],
                  service_account: str | None, automount_token: bool, node_selector: dict[str, str] | None = None,
                  restart_policy: str | None = None, image_pull_secrets: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": automount_token,
        "containers": [container],
        "volumes": volumes,
    }
    if service_account:
        spec["serviceAccountName"] = _check_name("ServiceAccount", service_account)
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": _check_name("Secret", s)} for s in image_pull_secrets]
    return {"metadata": {"labels": {**run_labels, LABEL_COMPONENT: component}}, "spec": spec}


def _object_labels(spec: "PipelineSpec", run_id: str, owner: str | None, labels: dict[str, str] | None) -> dict[str, str]:
    out = dict(check_labels(labels))
    out.update({
        LABEL_NAME: "aimass",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN_ID: run_id,
        LABEL_PIPELINE: spec.name,
    })
    if owner:
        out[LABEL_OWNER] = owner_label_value(owner)
    return out


def build_configmap(spec: "PipelineSpec", run_id: str, namespace: str, *, owner: str | None = None,
                    labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The ConfigMap holding ``pipeline.yaml`` for one run (immutable).

    Raises:
        InvalidRequestError: the spec is too large for a ConfigMap, or a label is invalid.
    """
    text = spec.to_yaml()
    if len(text.encode()) > MAX_CONFIGMAP_BYTES:
        raise InvalidRequestError("the pipeline spec is too large to submit", got=len(text.encode()),
                                  fix=f"Keep it under {MAX_CONFIGMAP_BYTES} bytes: keep data out of the spec.")
    meta: dict[str, Any] = {
        "name": configmap_name(run_id),
        "namespace": _check_name("namespace", namespace),
        "labels": {**_object_labels(spec, run_id, owner, labels), LABEL_COMPONENT: "pipeline-spec"},
    }
    if owner:
        meta["annotations"] = {ANNOTATION_OWNER: owner}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "immutable": True, "data": {SPEC_FILE: text}}


def build_rayjob(
    spec: "PipelineSpec",
    run_id: str,
    namespace: str,
    *,
    image: str | None = None,
    service_account: str | None = None,
    cluster_selector: str | dict[str, str] | None = None,
    cluster: ClusterShape | None = None,
    configmap: str | None = None,
    action: str = "run",
    owner: str | None = None,
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    secret_env: dict[str, SecretEnv] | None = None,
    env_from_secrets: list[str] | None = None,
    image_pull_policy: str = "IfNotPresent",
    image_pull_secrets: list[str] | None = None,
    active_deadline_s: int = 24 * 3600,
    ttl_after_finished_s: int = 3600,
    backoff_limit: int = 0,
    submitter_backoff_limit: int = 2,
    ray_version: str | None = None,
    token_auth: bool = True,
    automount_service_account_token: bool = False,
) -> dict[str, Any]:
    """A KubeRay ``RayJob`` that runs ``aimass run pipeline.yaml --run-id <run_id>``.

    Args:
        spec: the validated pipeline.
        run_id: the run id (the RayJob is named ``aimass-<run_id>``).
        namespace: where the RayJob goes.
        image: the container image with aimass and the same Ray version installed (default:
            :data:`aimass.k8s.image.DEFAULT_IMAGE`, the image of this aimass version).
        service_account: the ServiceAccount of the Ray pods (e.g. for S3 access through IRSA).
        cluster_selector: the name of an existing RayCluster (or a full ``clusterSelector`` map);
            a new RayCluster is created for the run when unset.
        cluster: the shape of that new RayCluster (default: sized from the pipeline).
        configmap: name of the ConfigMap with ``pipeline.yaml`` (default: ``aimass-<run_id>-spec``).
        action: the allowlisted entrypoint (``run``; ``validate`` for smoke tests).
        owner: who submitted it (label + annotation).
        labels: user labels (unprefixed keys).
        env: plain, non-secret environment for the Ray containers (names that look secret are refused).
        secret_env: environment variables read from Secret keys.
        env_from_secrets: Secrets whose keys all become environment variables.
        active_deadline_s: the whole run is failed after this many seconds.
        ttl_after_finished_s: the RayCluster is deleted this long after the job finishes.
        backoff_limit: RayJob-level retries (each on a new cluster). Must be 0 with ``cluster_selector``.
        submitter_backoff_limit: retries of the submitter pod (safe: resubmission is idempotent).
        ray_version: ``rayClusterSpec.rayVersion`` (default: the Ray installed here); token auth needs >= 2.52.
        token_auth: turn on Ray token authentication (``authOptions.mode: token``).
    """
    check_run_id(run_id)
    _check_name("namespace", namespace)
    image = DEFAULT_IMAGE if image is None else image
    if not image or any(c.isspace() for c in image):
        raise InvalidRequestError("a container image is required", got=image or None,
                                  fix="Pass --image or set AIMASS_RAY_IMAGE to an image with aimass installed.")
    if image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise InvalidRequestError("invalid imagePullPolicy", got=image_pull_policy, fix="Use Always, IfNotPresent or Never.")
    for what, v, lo in (("activeDeadlineSeconds", active_deadline_s, 1), ("ttlSecondsAfterFinished", ttl_after_finished_s, 0),
                        ("backoffLimit", backoff_limit, 0), ("submitter backoffLimit", submitter_backoff_limit, 0)):
        if not isinstance(v, int) or v < lo:
            raise InvalidRequestError(f"{what} must be an integer >= {lo}", got=v)
    name = rayjob_name(run_id)
    cm_name = configmap or configmap_name(run_id)
    obj_labels = _object_labels(spec, run_id, owner, labels)
    pod_labels = {LABEL_NAME: "aimass", LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN_ID: run_id}
    argv = build_entrypoint(action, spec_path=SPEC_FILE, run_id=run_id)
    shape = cluster or ClusterShape.for_pipeline(spec)
    container_env = _env_list(env, secret_env)
    env_from = [{"secretRef": {"name": _check_name("Secret", s)}} for s in (env_from_secrets or [])]

    # The submitter: `ray job submit` (command filled in by KubeRay) with the spec mounted read-only.
    submitter_container: dict[str, Any] = {
        "name": "ray-job-submitter",
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}],
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "pipeline-spec", "mountPath": SPEC_MOUNT_PATH, "readOnly": True}],
    }
    submitter = _pod_template(
        component="submitter", run_labels=pod_labels, container=submitter_container,
        volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                 {"name": "pipeline-spec", "configMap": {"name": cm_name, "items": [{"key": SPEC_FILE, "path": SPEC_FILE}]}}],
        service_account=service_account, automount_token=False, restart_policy="Never",
        image_pull_secrets=image_pull_secrets)

    runtime_env = {"working_dir": SPEC_MOUNT_PATH, "env_vars": {"AIMASS_RUN_ID": run_id, "AIMASS_SUBMITTED_BY": "k8s"}}
    job_spec: dict[str, Any] = {
        "entrypoint": entrypoint_string(argv),
        "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=True),
        "metadata": {LABEL_RUN_ID: run_id, LABEL_PIPELINE: spec.name},
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": submitter,
        "submitterConfig": {"backoffLimit": submitter_backoff_limit},
        "activeDeadlineSeconds": active_deadline_s,
    }

    if cluster_selector:
        selector = {"ray.io/cluster": cluster_selector} if isinstance(cluster_selector, str) else dict(cluster_selector)
        if not selector.get("ray.io/cluster"):
            raise InvalidRequestError("clusterSelector needs the RayCluster name under 'ray.io/cluster'", got=selector)
        _check_name("RayCluster", selector["ray.io/cluster"])
        if backoff_limit:
            raise InvalidRequestError("backoffLimit must be 0 with an existing cluster", got=backoff_limit,
                                      fix="KubeRay retries a RayJob on a new cluster only; drop the cluster selector or the retries.")
        # An existing cluster is not ours to shut down; without shutdown KubeRay forbids a TTL.
        job_spec.update({"clusterSelector": selector, "shutdownAfterJobFinishes": False})
    else:
        ray_version = ray_version or default_ray_version()
        for q in (shape.head_cpu, shape.worker_cpu):
            _check_quantity("cpu", q)
        for q in (shape.head_memory, shape.worker_memory, shape.tmp_size, shape.shm_size):
            _check_quantity("memory", q)
        if not 0 <= shape.workers <= 1000 or not 0 <= shape.worker_gpu <= 16:
            raise InvalidRequestError("cluster shape out of range", got={"workers": shape.workers, "gpu": shape.worker_gpu})

        def ray_container(cname: str, cpu: str, memory: str, gpu: int) -> dict[str, Any]:
            res: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
            if gpu:
                res["requests"]["nvidia.com/gpu"] = str(gpu)
                res["limits"]["nvidia.com/gpu"] = str(gpu)
            c: dict[str, Any] = {
                "name": cname, "image": image, "imagePullPolicy": image_pull_policy, "env": container_env,
                "resources": res, "securityContext": container_security_context(), "volumeMounts": list(_MOUNTS),
            }
            if env_from:
                c["envFrom"] = env_from
            return c

        head = _pod_template(component="ray-head", run_labels=pod_labels,
                             container=ray_container("ray-head", shape.head_cpu, shape.head_memory, 0),
                             volumes=_volumes(shape), service_account=service_account,
                             automount_token=automount_service_account_token, node_selector=shape.node_selector,
                             image_pull_secrets=image_pull_secrets)
        cluster_spec: dict[str, Any] = {
            "rayVersion": ray_version,
            "enableInTreeAutoscaling": False,
            "headGroupSpec": {
                "serviceType": "ClusterIP",  # never a LoadBalancer/NodePort: Ray stays inside the cluster
                "enableIngress": False,
                "rayStartParams": {},
                "template": head,
            },
            "workerGroupSpecs": [],
        }
        if token_auth:
            cluster_spec["authOptions"] = {"mode": "token"}
        if shape.workers:
            worker = _pod_template(component="ray-worker", run_labels=pod_labels,
                                   container=ray_container("ray-worker", shape.worker_cpu, shape.worker_memory, shape.worker_gpu),
                                   volumes=_volumes(shape), service_account=service_account,
                                   automount_token=automount_service_account_token, node_selector=shape.node_selector,
                                   image_pull_secrets=image_pull_secrets)
            cluster_spec["workerGroupSpecs"].append({
                "groupName": "workers", "replicas": shape.workers, "minReplicas": shape.workers,
                "maxReplicas": shape.workers, "rayStartParams": {}, "template": worker,
            })
        job_spec.update({
            "rayClusterSpec": cluster_spec,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl_after_finished_s,
            "backoffLimit": backoff_limit,
        })

    annotations = {ANNOTATION_OWNER: owner} if owner else {}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {**obj_labels, LABEL_COMPONENT: "pipeline-run"}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": f"{RAY_GROUP}/{RAY_VERSION_API}", "kind": "RayJob", "metadata": meta, "spec": job_spec}


# Ray Serve's high-throughput mode (Ray >= 2.55), set on every node before Ray starts.
HIGH_THROUGHPUT_SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def build_rayservice(
    serve_config: Any,
    name: str,
    namespace: str,
    *,
    image: str | None = None,
    service_account: str | None = None,
    cluster: ClusterShape | None = None,
    labels: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    secret_env: dict[str, SecretEnv] | None = None,
    env_from_secrets: list[str] | None = None,
    image_pull_policy: str = "IfNotPresent",
    ray_version: str | None = None,
    token_auth: bool = True,
    high_throughput: bool = True,
) -> dict[str, Any]:
    """A KubeRay ``RayService`` serving ``serve_config``.

    ``serve_config`` is an :class:`aimass.serving.config.ServeConfig` (converted with
    ``aimass.serving.config.to_serve_config_v2``), or an already-built Serve config v2 dict
    (``{"applications": [...]}``) or its YAML text. Pods follow the same restricted profile as RayJobs.
    ``high_throughput`` turns on Ray Serve's high-throughput mode on every pod (HAProxy in front of the
    ingress replicas on port 8000, gRPC between deployments), as the chart's ``serving.highThroughput``
    does; ``env`` overrides it. ``image`` defaults to :data:`aimass.k8s.image.DEFAULT_IMAGE`.
    """
    image = DEFAULT_IMAGE if image is None else image
    if not image or any(c.isspace() for c in image):
        raise InvalidRequestError("a container image is required", got=image or None,
                                  fix="Pass an image with aimass and the same Ray version installed.")
    if isinstance(serve_config, str):
        serve_v2 = serve_config
    elif isinstance(serve_config, dict):
        serve_v2 = yaml.safe_dump(serve_config, sort_keys=False)
    else:
        try:
            from aimass.serving.config import to_serve_config_v2
        except ImportError as exc:  # pragma: no cover - until aimass.serving lands
            raise InvalidRequestError("aimass.serving is not available to convert the serve config",
                                      fix="Pass a Serve config v2 dict instead.") from exc
        converted = to_serve_config_v2(serve_config)
        serve_v2 = converted if isinstance(converted, str) else yaml.safe_dump(converted, sort_keys=False)
    if len(name) > MAX_RAYJOB_NAME or not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name):
        raise InvalidRequestError("invalid RayService name", got=name,
                                  fix=f"Use at most {MAX_RAYJOB_NAME} lowercase letters, digits and '-', starting with a letter.")
    _check_name("namespace", namespace)
    shape = cluster or ClusterShape(workers=1)
    container_env = _env_list({**(HIGH_THROUGHPUT_SERVE_ENV if high_throughput else {}), **(env or {})}, secret_env)
    env_from = [{"secretRef": {"name": _check_name("Secret", s)}} for s in (env_from_secrets or [])]
    pod_labels = {LABEL_NAME: "aimass", LABEL_MANAGED_BY: MANAGED_BY, "aimass.io/service": name}

    def container(cname: str, cpu: str, memory: str, gpu: int) -> dict[str, Any]:
        res: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
        if gpu:
            res["requests"]["nvidia.com/gpu"] = res["limits"]["nvidia.com/gpu"] = str(gpu)
        c: dict[str, Any] = {"name": cname, "image": image, "imagePullPolicy": image_pull_policy, "env": container_env,
                             "resources": res, "securityContext": container_security_context(), "volumeMounts": list(_MOUNTS)}
        if env_from:
            c["envFrom"] = env_from
        return c

    cluster_spec: dict[str, Any] = {
        "rayVersion": ray_version or default_ray_version(),
        "enableInTreeAutoscaling": False,
        "headGroupSpec": {
            "serviceType": "ClusterIP", "enableIngress": False, "rayStartParams": {},
            "template": _pod_template(component="ray-head", run_labels=pod_labels,
                                      container=container("ray-head", shape.head_cpu, shape.head_memory, 0),
                                      volumes=_volumes(shape), service_account=service_account, automount_token=False,
                                      node_selector=shape.node_selector),
        },
        "workerGroupSpecs": [],
    }
    if token_auth:
        cluster_spec["authOptions"] = {"mode": "token"}
    if shape.workers:
        cluster_spec["workerGroupSpecs"].append({
            "groupName": "workers", "replicas": shape.workers, "minReplicas": shape.workers, "maxReplicas": shape.workers,
            "rayStartParams": {},
            "template": _pod_template(component="ray-worker", run_labels=pod_labels,
                                      container=container("ray-worker", shape.worker_cpu, shape.worker_memory, shape.worker_gpu),
                                      volumes=_volumes(shape), service_account=service_account, automount_token=False,
                                      node_selector=shape.node_selector),
        })
    meta_labels = {**check_labels(labels), LABEL_NAME: "aimass", LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: "model-server"}
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION_API}",
        "kind": "RayService",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {"serveConfigV2": serve_v2, "rayClusterConfig": cluster_spec},
    }
