"""A small KubeRay client: create a run (ConfigMap + RayJob), read and watch its status, stream the
driver's logs from the submitter pod, cancel (suspend) or delete it.

It is built around an injectable :class:`kubernetes.client.ApiClient`, so tests hand it one whose
transport is an in-memory API server (:mod:`aimass.k8s.testing`) and exercise this exact code. Every
API failure goes through :func:`aimass.k8s.errors.translate_api_error`.

Example:
    >>> kr = KubeRayClient()                       # kubeconfig, or the pod's service account
    >>> kr.create_run(configmap, rayjob)           # doctest: +SKIP
    >>> kr.watch_rayjob("aimass-20250101-120000-abc123", "ml", timeout_s=3600)  # doctest: +SKIP
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from aimass.exceptions import AimassError, ExecutorError, KubernetesError, NotFoundError
from aimass.k8s.builders import LABEL_MANAGED_BY, MANAGED_BY, RAY_GROUP, RAY_VERSION_API, RAYJOB_PLURAL, RAYSERVICE_PLURAL
from aimass.k8s.errors import translate_api_error
from aimass.orchestrator.executors.base import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, RunStatus

__all__ = ["KubeRayClient", "load_api_client", "kubeconfig_namespace", "rayjob_run_status", "parse_k8s_time"]

log = logging.getLogger(__name__)


def load_api_client(context: str | None = None) -> k8s_client.ApiClient:
    """An ApiClient from the pod's service account (in a cluster) or the kubeconfig (elsewhere)."""
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
        return k8s_client.ApiClient(cfg)
    except k8s_config.ConfigException:
        pass
    try:
        k8s_config.load_kube_config(context=context, client_configuration=cfg)
    except (k8s_config.ConfigException, FileNotFoundError, OSError) as exc:
        raise KubernetesError("no Kubernetes credentials found", got=str(exc)[:300],
                              fix="Set KUBECONFIG (or ~/.kube/config) and the context (--context), or run inside the cluster.") from None
    return k8s_client.ApiClient(cfg)


def kubeconfig_namespace(context: str | None = None) -> str | None:
    """The namespace of the kubeconfig's (current or named) context, if it sets one."""
    try:
        contexts, active = k8s_config.list_kube_config_contexts()
    except Exception:  # no kubeconfig: the client says so when it is used
        return None
    ctx = next((c for c in contexts if c.get("name") == context), active) if context else active
    return ((ctx or {}).get("context") or {}).get("namespace") or None


def parse_k8s_time(value: str | None) -> float | None:
    """RFC 3339 (``2025-01-01T12:00:00Z``) to seconds since the epoch."""
    if not value:
        return None
    try:
        return float(calendar.timegm(time.strptime(value.split(".")[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def rayjob_run_status(obj: dict[str, Any]) -> RunStatus:
    """A RayJob's status in backend-neutral terms."""
    st = obj.get("status") or {}
    spec = obj.get("spec") or {}
    jds = st.get("jobDeploymentStatus") or ""
    js = st.get("jobStatus") or ""
    msg = st.get("message") or st.get("reason") or None
    details = {"jobDeploymentStatus": jds or None, "jobStatus": js or None, "rayClusterName": st.get("rayClusterName"),
               "jobId": st.get("jobId"), "reason": st.get("reason")}
    started, finished = parse_k8s_time(st.get("startTime")), parse_k8s_time(st.get("endTime"))
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        state = CANCELLED
        msg = msg or "the run is being deleted"
    elif spec.get("suspend") and jds not in ("Complete", "Failed"):
        state, msg = CANCELLED, msg or "cancelled (the RayJob is suspended and its cluster deleted)"
    elif jds in ("Suspended", "Suspending"):  # suspend was lifted again: KubeRay is resuming it
        state, msg = PENDING, msg or "resuming"
    elif js == "SUCCEEDED":
        state = SUCCEEDED
    elif js == "STOPPED":
        state = CANCELLED
    elif js == "FAILED" or jds in ("Failed", "ValidationFailed"):
        state = FAILED
    elif jds == "Complete":
        state = FAILED  # complete without SUCCEEDED: e.g. the submitter failed
        msg = msg or "the job finished without succeeding"
    elif js == "RUNNING" or (jds == "Running" and js not in ("", "NEW", "PENDING")):
        state = RUNNING
    else:  # New, Initializing, Waiting, Retrying, or the Ray job still setting up its runtime env
        state = PENDING
    return RunStatus(state=state, message=msg, started_at=started, finished_at=finished, details=details)


class KubeRayClient:
    """Create, follow and cancel RayJobs.

    Args:
        api_client: a configured ``kubernetes.client.ApiClient`` (default: :func:`load_api_client`).
        context: kubeconfig context when ``api_client`` is not given.
        identity: who we are (for error messages when the API server does not say).
        request_timeout_s: per-request timeout.
        sleep / clock: injectable for tests.
    """

    def __init__(self, api_client: k8s_client.ApiClient | None = None, *, context: str | None = None,
                 identity: str | None = None, request_timeout_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.api_client = api_client or load_api_client(context)
        self.custom = k8s_client.CustomObjectsApi(self.api_client)
        self.core = k8s_client.CoreV1Api(self.api_client)
        self.identity = identity
        self.request_timeout_s = request_timeout_s
        self._sleep = sleep
        self._clock = clock

    # --- plumbing -------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any, action: str, resource: str, namespace: str | None,
              name: str | None = None, api_group: str = RAY_GROUP, timeout: Any = "default", **kwargs: Any) -> Any:
        try:
            if timeout == "default":
                timeout = self.request_timeout_s
            if timeout is not None:
                kwargs["_request_timeout"] = timeout
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise translate_api_error(exc, action=action, resource=resource, namespace=namespace, name=name,
                                      identity=self.identity, api_group=api_group) from None
        except (Urllib3HTTPError, OSError) as exc:
            raise translate_api_error(exc, action=action, resource=resource, namespace=namespace, name=name,
                                      identity=self.identity, api_group=api_group) from None

    # --- runs -----------------------------------------------------------------------------------
    def create_run(self, configmap: dict[str, Any], rayjob: dict[str, Any]) -> dict[str, Any]:
        """Create the RayJob, then the spec ConfigMap owned by it (so it is deleted with the RayJob and
        needs no later patch). If the ConfigMap cannot be created the RayJob is deleted again.

        The RayJob's submitter mounts the ConfigMap; KubeRay starts it only once the RayCluster is
        up, and the kubelet retries a mount whose ConfigMap is still missing, so the order is safe.
        """
        ns = rayjob["metadata"]["namespace"]
        name = rayjob["metadata"]["name"]
        created = self._call(self.custom.create_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, ns, RAYJOB_PLURAL,
                             rayjob, action="create", resource=RAYJOB_PLURAL, namespace=ns, name=name)
        cm = dict(configmap, metadata=dict(configmap["metadata"]))
        uid = (created.get("metadata") or {}).get("uid")
        if uid:
            cm["metadata"]["ownerReferences"] = [{"apiVersion": f"{RAY_GROUP}/{RAY_VERSION_API}", "kind": "RayJob",
                                                  "name": name, "uid": uid, "blockOwnerDeletion": False, "controller": False}]
        try:
            self._call(self.core.create_namespaced_config_map, ns, cm, action="create", resource="configmaps",
                       namespace=ns, name=cm["metadata"]["name"], api_group="")
        except AimassError:
            try:
                self._call(self.custom.delete_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, ns, RAYJOB_PLURAL, name,
                           action="delete", resource=RAYJOB_PLURAL, namespace=ns, name=name, propagation_policy="Background")
            except AimassError as cleanup:  # pragma: no cover - best effort
                log.warning("could not remove RayJob %s/%s after a failed submission: %s", ns, name, cleanup)
            raise
        return created

    def get_rayjob(self, name: str, namespace: str) -> dict[str, Any]:
        return self._call(self.custom.get_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, namespace, RAYJOB_PLURAL, name,
                          action="get", resource=RAYJOB_PLURAL, namespace=namespace, name=name)

    def list_rayjobs(self, namespace: str | None, label_selector: str | None = f"{LABEL_MANAGED_BY}={MANAGED_BY}") -> list[dict[str, Any]]:
        """RayJobs made by aimass in ``namespace`` (all namespaces when None)."""
        kw = {"label_selector": label_selector} if label_selector else {}
        if namespace:
            res = self._call(self.custom.list_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, namespace, RAYJOB_PLURAL,
                             action="list", resource=RAYJOB_PLURAL, namespace=namespace, **kw)
        else:
            res = self._call(self.custom.list_cluster_custom_object, RAY_GROUP, RAY_VERSION_API, RAYJOB_PLURAL,
                             action="list", resource=RAYJOB_PLURAL, namespace=None, **kw)
        return list(res.get("items") or [])

    def ping(self, namespace: str) -> None:
        """Raise unless the API server answers, KubeRay is installed and we may list RayJobs."""
        self._call(self.custom.list_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, namespace, RAYJOB_PLURAL,
                   action="list", resource=RAYJOB_PLURAL, namespace=namespace, limit=1, timeout=5.0)

    def watch_rayjob(self, name: str, namespace: str, *, timeout_s: float | None = None, interval_s: float = 2.0,
                     on_update: Callable[[RunStatus, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll the RayJob until its run is finished; ``on_update`` sees every status change.

        Raises:
            ExecutorError: (retryable) when ``timeout_s`` passes first.
        """
        deadline = None if timeout_s is None else self._clock() + timeout_s
        last: tuple | None = None
        while True:
            obj = self.get_rayjob(name, namespace)
            status = rayjob_run_status(obj)
            key = (status.state, status.details.get("jobDeploymentStatus"), status.details.get("jobStatus"), status.message)
            if key != last and on_update is not None:
                on_update(status, obj)
            last = key
            if status.terminal:
                return obj
            if deadline is not None and self._clock() >= deadline:
                raise ExecutorError(f"timed out after {timeout_s:g}s waiting for RayJob {name!r} to finish",
                                    got=status.state, retryable=True,
                                    fix=f"It keeps running; follow it with `aimass runs show {name.removeprefix('aimass-')}`.")
            self._sleep(interval_s)

    def suspend_rayjob(self, name: str, namespace: str) -> dict[str, Any]:
        """Cancel: KubeRay stops the job, deletes its cluster and submitter, and keeps the RayJob as a record."""
        return self._call(self.custom.patch_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, namespace, RAYJOB_PLURAL, name,
                          {"spec": {"suspend": True}}, action="patch", resource=RAYJOB_PLURAL, namespace=namespace, name=name)

    def delete_rayjob(self, name: str, namespace: str, *, configmap: str | None = None) -> None:
        """Delete the RayJob (its cluster, submitter and ConfigMap go with it)."""
        self._call(self.custom.delete_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, namespace, RAYJOB_PLURAL, name,
                   action="delete", resource=RAYJOB_PLURAL, namespace=namespace, name=name,
                   propagation_policy="Background")
        if configmap:
            try:
                self._call(self.core.delete_namespaced_config_map, configmap, namespace, action="delete",
                           resource="configmaps", namespace=namespace, name=configmap, api_group="")
            except NotFoundError:
                pass  # already garbage-collected

    # --- logs -----------------------------------------------------------------------------------
    def submitter_pods(self, name: str, namespace: str) -> list[dict[str, Any]]:
        """Pods of the RayJob's submitter Kubernetes Job (named like the RayJob), oldest first."""
        res = self._call(self.core.list_namespaced_pod, namespace, action="list", resource="pods", namespace=namespace,
                         api_group="", label_selector=f"job-name={name}")
        pods = [self.api_client.sanitize_for_serialization(p) for p in (res.items or [])]
        return sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")

    def logs(self, name: str, namespace: str, *, follow: bool = False, tail_lines: int | None = None,
             wait_s: float = 1800.0, interval_s: float = 2.0) -> Iterator[str]:
        """The driver's output, as relayed by the submitter pod (``ray job logs --follow``).

        With ``follow``, wait (up to ``wait_s``) for the submitter pod to start, then stream until
        it ends. Without it, print what is there now.
        """
        deadline = self._clock() + wait_s
        while True:
            pods = self.submitter_pods(name, namespace)
            phase = ((pods[-1].get("status") or {}).get("phase") if pods else None) or "Pending"
            if pods and phase != "Pending":
                break
            if not follow:
                if pods:
                    raise NotFoundError(f"no logs yet: the submitter pod of {name!r} is still starting",
                                        fix="Retry in a moment, or use --follow to wait for them.")
                raise NotFoundError(f"no logs yet: {name!r} has no submitter pod (yet)",
                                    fix="The RayCluster may still be starting; use --follow to wait, or `aimass runs show`.")
            status = rayjob_run_status(self.get_rayjob(name, namespace))
            if status.terminal and not pods:
                return
            if self._clock() >= deadline:
                raise ExecutorError(f"no submitter pod for {name!r} after {wait_s:g}s", retryable=True,
                                    fix="Check the RayJob events: `kubectl describe rayjob -n " + namespace + " " + name + "`.")
            self._sleep(interval_s)
        pod = pods[-1]["metadata"]["name"]
        if not follow:
            kw: dict[str, Any] = {"tail_lines": tail_lines} if tail_lines else {}
            text = self._call(self.core.read_namespaced_pod_log, pod, namespace, action="logs", resource="pods",
                              namespace=namespace, name=pod, api_group="", **kw)
            yield from (text or "").splitlines()
            return
        resp = self._call(self.core.read_namespaced_pod_log, pod, namespace, action="logs", resource="pods", namespace=namespace,
                          name=pod, api_group="", follow=True, _preload_content=False, timeout=None,
                          **({"tail_lines": tail_lines} if tail_lines else {}))
        buf = b""
        try:
            for chunk in resp.stream(4096):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    yield line.decode("utf-8", "replace")
            if buf:
                yield buf.decode("utf-8", "replace")
        finally:
            resp.release_conn()

    # --- RayService (used by deploy) ---------------------------------------------------------------
    def apply_rayservice(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the RayService, or update its spec when it exists (KubeRay rolls it out)."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            return self._call(self.custom.create_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, ns, RAYSERVICE_PLURAL, obj,
                              action="create", resource=RAYSERVICE_PLURAL, namespace=ns, name=name)
        except AimassError as exc:
            if getattr(exc, "code", "") != "conflict":
                raise
        return self._call(self.custom.patch_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, ns, RAYSERVICE_PLURAL, name,
                          {"metadata": {"labels": obj["metadata"].get("labels", {})}, "spec": obj["spec"]},
                          action="patch", resource=RAYSERVICE_PLURAL, namespace=ns, name=name)

    def get_rayservice(self, name: str, namespace: str) -> dict[str, Any]:
        return self._call(self.custom.get_namespaced_custom_object, RAY_GROUP, RAY_VERSION_API, namespace, RAYSERVICE_PLURAL, name,
                          action="get", resource=RAYSERVICE_PLURAL, namespace=namespace, name=name)
