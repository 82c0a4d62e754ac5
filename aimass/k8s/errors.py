"""Turn Kubernetes API failures into errors that say what happened and how to fix it.

* 403 with a quota message -> :class:`KubernetesQuotaError` (which quota, what to do).
* 403 otherwise -> :class:`KubernetesForbiddenError`: "the service account X cannot create rayjobs in
  namespace Y", with the Role/RoleBinding that grants it.
* 404 on a KubeRay path (no such resource type) -> :class:`KubeRayNotInstalledError` with the Helm command.
* 404 of a named object -> :class:`~aimass.exceptions.NotFoundError`; of a namespace -> a clear message.
* 401, 409, 422, 429, 5xx and connection failures each get their own message (the transient ones
  are ``retryable``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from aimass.exceptions import AimassError, AuthError, ConflictError, InvalidRequestError, KubernetesError, NotFoundError

__all__ = [
    "KubernetesForbiddenError", "KubernetesQuotaError", "KubeRayNotInstalledError", "translate_api_error",
    "KUBERAY_INSTALL_FIX",
]

KUBERAY_INSTALL_FIX = (
    "Install the KubeRay operator (v1.7 or newer): helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && "
    "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0 -n kuberay-system --create-namespace"
)

_VERBS = {"create": "create", "get": "get", "list": "list", "watch": "watch", "patch": "patch", "delete": "delete",
          "logs": "get", "update": "update"}


class KubernetesForbiddenError(KubernetesError):
    """RBAC refused the request."""

    code = "kubernetes_forbidden"
    http_status = 403


class KubernetesQuotaError(KubernetesError):
    """A ResourceQuota in the namespace refused the request."""

    code = "quota_exceeded"
    http_status = 403


class KubeRayNotInstalledError(KubernetesError):
    """The cluster has no ray.io CRDs."""

    code = "kuberay_not_installed"
    http_status = 503


def _status_body(exc: Any) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.strip().startswith("{"):
        try:
            data = json.loads(body)
            return data if isinstance(data, dict) else {}
        except ValueError:
            return {}
    return {}


def _subject(message: str, fallback: str | None) -> str:
    """Who was refused: ``the service account ns/name`` or ``the user alice``."""
    m = re.search(r'User "system:serviceaccount:([^:"]+):([^"]+)"', message)
    if m:
        return f"the service account {m.group(1)}/{m.group(2)}"
    m = re.search(r'User "([^"]+)"', message)
    if m:
        return f"the user {m.group(1)!r}"
    return fallback or "the current Kubernetes identity"


def translate_api_error(exc: BaseException, *, action: str, resource: str, namespace: str | None = None,
                        name: str | None = None, identity: str | None = None,
                        api_group: str = "ray.io") -> AimassError:
    """Map a ``kubernetes.client.ApiException`` (or a connection error) to an AI Mass error.

    Args:
        exc: what the client raised.
        action: the verb tried: create, get, list, watch, patch, delete, logs.
        resource: the plural resource (``rayjobs``, ``configmaps``, ``pods``).
        namespace / name: what was addressed.
        identity: who we are, when known (used when the API server's message does not say).
        api_group: the resource's API group (``""`` for core).
    """
    status = getattr(exc, "status", None)
    if status is None or status == 0:
        reason = getattr(exc, "reason", None) or str(exc)
        return KubernetesError("cannot reach the Kubernetes API server", got=str(reason)[:300], retryable=True,
                               fix="Check your kubeconfig context (`kubectl cluster-info`) or, in a pod, its network policy.")
    body = _status_body(exc)
    message = str(body.get("message") or getattr(exc, "reason", "") or "")
    details = body.get("details") or {}
    ns = namespace or "default"
    where = f"in namespace {ns!r}" if namespace else ""
    what = f"{resource} {name!r}" if name else resource
    group = f"{resource}.{api_group}" if api_group else resource

    if status == 401:
        return AuthError("the Kubernetes API server rejected our credentials", got=message[:300] or None,
                         fix="Refresh your kubeconfig credentials (try `kubectl get pods`), or check the pod's service-account token.")
    if status == 403:
        if "exceeded quota" in message or "quota" in message.lower() and "forbidden" in message.lower():
            quota = re.search(r"exceeded quota: ([^,]+)", message)
            return KubernetesQuotaError(
                f"the resource quota{' ' + quota.group(1) if quota else ''} in namespace {ns!r} does not allow this {resource[:-1] if resource.endswith('s') else resource}",
                got=message[:500],
                fix=f"Wait for other runs to finish or cancel some (`aimass runs list`), or ask for a larger quota "
                    f"(`kubectl describe resourcequota -n {ns}`).")
        who = _subject(message, identity)
        verb = _VERBS.get(action, action)
        sub = "pods/log" if action == "logs" else resource
        return KubernetesForbiddenError(
            f"{who} cannot {verb} {sub} in namespace {ns!r}", got=message[:500] or None,
            fix=(f"Grant it with a Role and RoleBinding, e.g. `kubectl create role aimass-runs -n {ns} "
                 f"--verb=create,get,list,watch,patch,delete --resource={group}` and "
                 f"`kubectl create rolebinding aimass-runs -n {ns} --role=aimass-runs --serviceaccount=<namespace>:<name>` "
                 "(the aimass Helm chart creates these with rbac.create=true)."))
    if status == 404:
        kind = str(details.get("kind") or "")
        if kind == "namespaces" or re.match(r'namespaces? "[^"]+" not found', message):
            return NotFoundError(f"namespace {ns!r} does not exist", fix=f"Create it (`kubectl create namespace {ns}`) or pass --namespace.")
        object_missing = bool(details.get("name")) or (name is not None and f'"{name}" not found' in message)
        if api_group == "ray.io" and (not object_missing or action in ("create", "list")):
            return KubeRayNotInstalledError(f"KubeRay CRDs are not installed: the cluster has no {group}",
                                            got=message[:300] or None, fix=KUBERAY_INSTALL_FIX)
        return NotFoundError(f"{what} not found {where}".strip(), fix="See `aimass runs list` for the runs that exist.")
    if status == 409:
        return ConflictError(f"{what} already exists {where}".strip(), got=message[:300] or None,
                             fix="Use another run id, or cancel and delete the old run first.")
    if status in (400, 422):
        causes = [f"{c.get('field', '')}: {c.get('message', '')}".strip(": ") for c in (details.get("causes") or [])]
        return InvalidRequestError(f"the Kubernetes API rejected the {resource[:-1] if resource.endswith('s') else resource}",
                                   got="; ".join(causes)[:800] or message[:800] or None,
                                   fix="This is a bug in the object aimass built, or the CRD version differs from KubeRay v1.7; please report it.")
    if status == 429 or status >= 500:
        return KubernetesError(f"the Kubernetes API server is unavailable ({status})", got=message[:300] or None,
                               retryable=True, fix="Retry in a moment; if it persists, check the API server's health.")
    return KubernetesError(f"Kubernetes API error {status} while trying to {action} {what}", got=message[:300] or None)
