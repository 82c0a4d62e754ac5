"""Run a pipeline on Kubernetes as a KubeRay RayJob: a thin executor over :mod:`aimass.k8s`.

``submit`` creates a ConfigMap with the spec and a RayJob whose submitter runs the allowlisted
``aimass run pipeline.yaml --run-id <id>`` on a fresh RayCluster (or an existing one,
``cluster=<RayCluster name>``). ``status``/``list``/``get`` read the RayJobs (the cluster is the
source of truth), ``logs`` streams the submitter pod, ``cancel`` suspends the RayJob (KubeRay stops
the job and deletes its cluster; the RayJob stays as a record) or, with ``delete=True`` or on an
existing cluster (which cannot be suspended), deletes it.

Configuration from the environment (:meth:`KubernetesExecutor.from_env`, used by the control plane):

==================================  ==========================================================
``AIMASS_K8S_NAMESPACE``            namespace of the runs (default: the pod's own, else default)
``AIMASS_RAY_IMAGE``                image with aimass + Ray (required)
``AIMASS_K8S_SERVICE_ACCOUNT``      ServiceAccount of the Ray pods
``AIMASS_K8S_RAY_CLUSTER``          run on this existing RayCluster instead of a new one
``AIMASS_K8S_ENV_FROM_SECRETS``     comma-separated Secrets whose keys become the pods' env
``AIMASS_K8S_IMAGE_PULL_SECRETS``   comma-separated image pull Secrets
``AIMASS_K8S_ACTIVE_DEADLINE_S``    fail a run after this many seconds (default 86400)
``AIMASS_K8S_TTL_AFTER_FINISHED_S`` delete a finished run's cluster after this (default 3600)
``AIMASS_K8S_MAX_WORKERS``          cap on worker pods per run (default 16)
==================================  ==========================================================

and the plain settings in :data:`~aimass.orchestrator.executors.ray_jobs.FORWARDED_ENV` are passed
on to the Ray pods when set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from aimass.exceptions import InvalidRequestError
from aimass.orchestrator.executors.base import CANCELLED, PENDING, RunStatus, SubmissionRef, check_run_id

if TYPE_CHECKING:  # pragma: no cover
    from aimass.k8s.builders import ClusterShape, SecretEnv
    from aimass.k8s.client import KubeRayClient
    from aimass.spec import PipelineSpec

__all__ = ["KubernetesExecutor", "default_namespace"]

_SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(context: str | None = None) -> str:
    """``AIMASS_K8S_NAMESPACE``, else the pod's own namespace, else the kubeconfig context's, else ``default``."""
    if os.environ.get("AIMASS_K8S_NAMESPACE"):
        return os.environ["AIMASS_K8S_NAMESPACE"]
    try:
        return _SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        pass
    from aimass.k8s.client import kubeconfig_namespace

    return kubeconfig_namespace(context) or "default"


def _csv(name: str) -> list[str]:
    return [s.strip() for s in os.environ.get(name, "").split(",") if s.strip()]


class KubernetesExecutor:
    """Submit pipelines as KubeRay RayJobs.

    Args:
        namespace: where runs go (default :func:`default_namespace`).
        image: the aimass image (default ``AIMASS_RAY_IMAGE``); needed to submit, not to read.
        service_account: ServiceAccount of the Ray pods.
        cluster: name of an existing RayCluster to run on (default: a new cluster per run).
        context: kubeconfig context.
        api_client: an injected ``kubernetes.client.ApiClient`` (tests: ``FakeKubeApi().api_client()``).
        kuberay: an injected :class:`~aimass.k8s.client.KubeRayClient`.
        shape: the per-run RayCluster shape (default: sized from the pipeline).
        env / secret_env / env_from_secrets: the Ray pods' environment (secrets by reference only).
        action: the allowlisted entrypoint (``run``).
        sleep / clock: injectable for tests.
    """

    backend: ClassVar[str] = "k8s"

    def __init__(self, *, namespace: str | None = None, image: str | None = None, service_account: str | None = None,
                 cluster: str | None = None, context: str | None = None, api_client: Any = None,
                 kuberay: "KubeRayClient | None" = None, shape: "ClusterShape | None" = None,
                 env: dict[str, str] | None = None, secret_env: "dict[str, SecretEnv] | None" = None,
                 env_from_secrets: list[str] | None = None, image_pull_secrets: list[str] | None = None,
                 active_deadline_s: int = 24 * 3600, ttl_after_finished_s: int = 3600, backoff_limit: int = 0,
                 max_workers: int = 16, action: str = "run", token_auth: bool = True,
                 sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None) -> None:
        self.namespace = namespace or default_namespace(context)
        self.image = image if image is not None else os.environ.get("AIMASS_RAY_IMAGE")
        self.service_account = service_account
        self.cluster = cluster
        self.context = context
        self._api_client = api_client
        self._kuberay = kuberay
        self.shape = shape
        if env is None:
            from aimass.orchestrator.executors.ray_jobs import FORWARDED_ENV

            env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        self.env = dict(env)
        self.secret_env = dict(secret_env or {})
        self.env_from_secrets = list(env_from_secrets or [])
        self.image_pull_secrets = list(image_pull_secrets or [])
        self.active_deadline_s = active_deadline_s
        self.ttl_after_finished_s = ttl_after_finished_s
        self.backoff_limit = backoff_limit
        self.max_workers = max_workers
        self.action = action
        self.token_auth = token_auth
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_env(cls, **overrides: Any) -> "KubernetesExecutor":
        """Configured from ``AIMASS_K8S_*`` / ``AIMASS_RAY_IMAGE`` (see the module docs); keywords win."""
        def int_env(name: str, default: int) -> int:
            try:
                return int(os.environ.get(name, default))
            except ValueError:
                raise InvalidRequestError(f"{name} must be an integer", got=os.environ.get(name)) from None
        opts: dict[str, Any] = {
            "namespace": overrides.get("namespace") or default_namespace(overrides.get("context")),
            "image": os.environ.get("AIMASS_RAY_IMAGE"),
            "service_account": os.environ.get("AIMASS_K8S_SERVICE_ACCOUNT") or None,
            "cluster": os.environ.get("AIMASS_K8S_RAY_CLUSTER") or None,
            "env_from_secrets": _csv("AIMASS_K8S_ENV_FROM_SECRETS"),
            "image_pull_secrets": _csv("AIMASS_K8S_IMAGE_PULL_SECRETS"),
            "active_deadline_s": int_env("AIMASS_K8S_ACTIVE_DEADLINE_S", 24 * 3600),
            "ttl_after_finished_s": int_env("AIMASS_K8S_TTL_AFTER_FINISHED_S", 3600),
            "max_workers": int_env("AIMASS_K8S_MAX_WORKERS", 16),
        }
        opts.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**opts)

    @classmethod
    def from_ref(cls, ref: SubmissionRef) -> "KubernetesExecutor":
        return cls(namespace=ref.namespace, context=ref.options.get("context"), cluster=ref.options.get("cluster"))

    @property
    def kuberay(self) -> "KubeRayClient":
        if self._kuberay is None:
            from aimass.k8s.client import KubeRayClient

            kw: dict[str, Any] = {}
            if self._sleep:
                kw["sleep"] = self._sleep
            if self._clock:
                kw["clock"] = self._clock
            ident = f"the service account {self.namespace}/{os.environ['AIMASS_K8S_SERVICE_ACCOUNT']}" \
                if os.environ.get("AIMASS_K8S_SERVICE_ACCOUNT") else None
            self._kuberay = KubeRayClient(self._api_client, context=self.context, identity=ident, **kw)
        return self._kuberay

    # --- building (also for --dry-run) ----------------------------------------------------------
    def build(self, spec: "PipelineSpec", run_id: str, *, labels: dict[str, str] | None = None,
              owner: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ConfigMap and RayJob ``submit`` would create."""
        from aimass.k8s.builders import ClusterShape, build_configmap, build_rayjob

        check_run_id(run_id)
        if not self.image:
            raise InvalidRequestError("no container image for the Ray pods",
                                      fix="Pass --image (an image with aimass installed) or set AIMASS_RAY_IMAGE.")
        cm = build_configmap(spec, run_id, self.namespace, owner=owner, labels=labels)
        shape = self.shape or ClusterShape.for_pipeline(spec, max_workers=self.max_workers)
        job = build_rayjob(spec, run_id, self.namespace, image=self.image, service_account=self.service_account,
                           cluster_selector=self.cluster, cluster=shape, configmap=cm["metadata"]["name"], action=self.action,
                           owner=owner, labels=labels, env=self.env, secret_env=self.secret_env,
                           env_from_secrets=self.env_from_secrets, image_pull_secrets=self.image_pull_secrets,
                           active_deadline_s=self.active_deadline_s, ttl_after_finished_s=self.ttl_after_finished_s,
                           backoff_limit=0 if self.cluster else self.backoff_limit, token_auth=self.token_auth)
        return cm, job

    def _ref(self, obj: dict[str, Any]) -> SubmissionRef:
        from aimass.k8s.builders import ANNOTATION_OWNER, LABEL_PIPELINE, LABEL_RUN_ID
        from aimass.k8s.client import parse_k8s_time, rayjob_run_status

        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        user_labels = {k: v for k, v in labels.items() if "/" not in k}
        spec = obj.get("spec") or {}
        selector = (spec.get("clusterSelector") or {}).get("ray.io/cluster")
        options: dict[str, Any] = {"configmap": f"{meta.get('name')}-spec"}
        if selector:
            options["cluster"] = selector
        if self.context:
            options["context"] = self.context
        return SubmissionRef(
            run_id=labels.get(LABEL_RUN_ID) or str(meta.get("name", "")).removeprefix("aimass-"),
            backend=self.backend, pipeline=labels.get(LABEL_PIPELINE, ""),
            submitted_at=parse_k8s_time(meta.get("creationTimestamp")) or 0.0,
            namespace=meta.get("namespace") or self.namespace, name=meta.get("name"), address=self.context,
            owner=(meta.get("annotations") or {}).get(ANNOTATION_OWNER), labels=user_labels, options=options,
            status=rayjob_run_status(obj))

    # --- the protocol ---------------------------------------------------------------------------
    def submit(self, spec: "PipelineSpec", run_id: str, *, labels: dict[str, str] | None = None,
               owner: str | None = None) -> SubmissionRef:
        cm, job = self.build(spec, run_id, labels=labels, owner=owner)
        created = self.kuberay.create_run(cm, job)
        ref = self._ref(created)
        ref.status = RunStatus(PENDING, message="submitted")
        return ref

    def _name(self, ref: SubmissionRef) -> tuple[str, str]:
        from aimass.k8s.builders import rayjob_name

        return ref.name or rayjob_name(ref.run_id), ref.namespace or self.namespace

    def status(self, ref: SubmissionRef) -> RunStatus:
        from aimass.k8s.client import rayjob_run_status

        return rayjob_run_status(self.kuberay.get_rayjob(*self._name(ref)))

    def watch(self, ref: SubmissionRef, *, timeout_s: float | None = None, interval_s: float = 2.0,
              on_update: Callable[[RunStatus], None] | None = None) -> RunStatus:
        """Wait for the run to finish (raises a retryable ExecutorError after ``timeout_s``)."""
        from aimass.k8s.client import rayjob_run_status

        obj = self.kuberay.watch_rayjob(*self._name(ref), timeout_s=timeout_s, interval_s=interval_s,
                                        on_update=(lambda st, _obj: on_update(st)) if on_update else None)
        return rayjob_run_status(obj)

    def logs(self, ref: SubmissionRef, follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        name, ns = self._name(ref)
        return self.kuberay.logs(name, ns, follow=follow, tail_lines=tail_lines)

    def cancel(self, ref: SubmissionRef, *, delete: bool = False) -> RunStatus:
        from aimass.k8s.client import rayjob_run_status

        name, ns = self._name(ref)
        obj = self.kuberay.get_rayjob(name, ns)
        status = rayjob_run_status(obj)
        on_existing_cluster = bool((obj.get("spec") or {}).get("clusterSelector"))
        if delete or (on_existing_cluster and not status.terminal):
            # KubeRay cannot suspend a RayJob on an existing cluster; deleting it stops the Ray job.
            self.kuberay.delete_rayjob(name, ns, configmap=f"{name}-spec")
            return RunStatus(status.state if status.terminal else CANCELLED,
                             message="deleted" if status.terminal else "cancelled (RayJob deleted)", details=status.details)
        if status.terminal:
            return status
        return rayjob_run_status(self.kuberay.suspend_rayjob(name, ns))

    def list(self) -> list[SubmissionRef]:
        refs = [self._ref(o) for o in self.kuberay.list_rayjobs(self.namespace)]
        return sorted(refs, key=lambda r: r.submitted_at, reverse=True)

    def get(self, run_id: str) -> SubmissionRef:
        from aimass.k8s.builders import rayjob_name

        return self._ref(self.kuberay.get_rayjob(rayjob_name(run_id), self.namespace))

    def ready(self) -> None:
        """Raise unless the API server answers, KubeRay is installed and we may list RayJobs."""
        self.kuberay.ping(self.namespace)
