"""An in-memory Kubernetes API server behind the real ``kubernetes`` client, for tests.

:class:`FakeKubeApi` replaces the client's REST transport (``ApiClient.rest_client``), so requests go
through the real client code (URL building, serialisation, error mapping) and our real KubeRay code
on top of it. It stores ConfigMaps, Pods and ray.io objects, validates KubeRay objects against the
CRD schemas like an API server would (422), does JSON merge patches, garbage-collects objects whose
owner was deleted, and lets a test play the KubeRay operator (:meth:`FakeKubeApi.set_rayjob_status`,
:meth:`FakeKubeApi.script_rayjob`) and inject failures (403 RBAC, 403 quota, 404 missing CRD, 5xx).

Example:
    >>> fake = FakeKubeApi(namespaces=["ml"])
    >>> kr = KubeRayClient(api_client=fake.api_client())
    >>> kr.list_rayjobs("ml")
    []
"""

from __future__ import annotations

import copy
import io
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client import rest

__all__ = ["FakeKubeApi", "Failure", "forbidden_body", "quota_body"]

_NOT_FOUND_PAGE = "404 page not found\n"


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def forbidden_body(user: str, verb: str, resource: str, group: str, namespace: str) -> dict[str, Any]:
    """The Status the API server sends when RBAC refuses a request."""
    grp = f' in API group "{group}"' if group else ' in API group ""'
    return _status(403, "Forbidden", f'{resource}.{group} is forbidden: User "{user}" cannot {verb} resource "{resource}"{grp} '
                                     f'in the namespace "{namespace}"', {"group": group, "kind": resource})


def quota_body(resource: str, name: str, quota: str = "compute-resources") -> dict[str, Any]:
    return _status(403, "Forbidden", f'{resource} "{name}" is forbidden: exceeded quota: {quota}, requested: count/{resource}=1, '
                                     f"used: count/{resource}=10, limited: count/{resource}=10",
                   {"name": name, "kind": resource})


@dataclass
class Failure:
    """Answer matching requests with ``status``/``body`` (``times`` times, or forever when None)."""

    method: str
    path_regex: str
    status: int
    body: dict[str, Any] | str
    times: int | None = 1


@dataclass
class _Req:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


_ROUTES = [
    # (regex, group, version, plural)
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>configmaps|pods)(?:/(?P<name>[^/]+))?(?P<log>/log)?$"), "", "v1"),
    (re.compile(r"^/apis/(?P<group>ray\.io)/(?P<version>v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>rayjobs|rayservices|rayclusters)"
                r"(?:/(?P<name>[^/]+))?(?P<status>/status)?$"), None, None),
    (re.compile(r"^/apis/(?P<group>ray\.io)/(?P<version>v1)/(?P<plural>rayjobs|rayservices|rayclusters)$"), None, None),
]
_KINDS = {"configmaps": "ConfigMap", "pods": "Pod", "rayjobs": "RayJob", "rayservices": "RayService", "rayclusters": "RayCluster"}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


def _match_labels(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
        elif term and term not in labels:
            return False
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _FakeRest:
    def __init__(self, api: "FakeKubeApi") -> None:
        self.api = api

    def request(self, method, url, headers=None, body=None, post_params=None, _request_timeout=None):
        return self.api._handle(method, url, headers or {}, body)

    def close(self) -> None:
        pass


class FakeKubeApi:
    """An in-memory API server.

    Args:
        namespaces: namespaces that exist (requests to others get 404 like a real server).
        crds_installed: whether ray.io resources exist (False: every ray.io path is a 404 page).
        validate: check ray.io objects against the KubeRay CRD schemas on create/patch (422 when invalid).
        user: the identity named in RBAC refusals.
    """

    def __init__(self, namespaces: Iterable[str] = ("default",), *, crds_installed: bool = True, validate: bool = True,
                 user: str = "system:serviceaccount:aimass:aimass-api") -> None:
        self.namespaces = set(namespaces)
        self.crds_installed = crds_installed
        self.validate = validate
        self.user = user
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name) -> object
        self.pod_logs: dict[tuple[str, str], str] = {}
        self.requests: list[_Req] = []
        self.failures: list[Failure] = []
        self.scripts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.on_rayjob_created: Callable[["FakeKubeApi", dict[str, Any]], None] | None = None
        self._lock = threading.RLock()
        self._rv = 0

    # --- wiring ----------------------------------------------------------------------------------
    def api_client(self) -> k8s_client.ApiClient:
        """A real ``kubernetes.client.ApiClient`` whose transport is this fake."""
        cfg = k8s_client.Configuration(host="https://kube.fake.invalid:6443")
        api = k8s_client.ApiClient(cfg)
        api.rest_client = _FakeRest(self)
        return api

    # --- test controls ---------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, status: int, body: dict[str, Any] | str, times: int | None = 1) -> None:
        """Make matching requests fail (e.g. ``fake.fail("POST", "rayjobs", 403, forbidden_body(...))``)."""
        self.failures.append(Failure(method.upper(), path_regex, status, body, times))

    def deny(self, verb_method: str, resource: str, group: str = "ray.io", times: int | None = None) -> None:
        """RBAC: refuse ``verb_method`` (POST/GET/PATCH/DELETE) on ``resource`` for :attr:`user`."""
        verb = {"POST": "create", "GET": "get", "PATCH": "patch", "DELETE": "delete"}[verb_method.upper()]
        ns = next(iter(self.namespaces), "default")
        self.fail(verb_method, rf"/{resource}(/|$|\?)", 403, forbidden_body(self.user, verb, resource, group, ns), times)

    def set_rayjob_status(self, namespace: str, name: str, **status: Any) -> dict[str, Any]:
        """Play the operator: merge ``status`` into the RayJob's status."""
        with self._lock:
            obj = self.objects[("rayjobs", namespace, name)]
            obj["status"] = {**(obj.get("status") or {}), **status}
            self._bump(obj)
            return copy.deepcopy(obj)

    def script_rayjob(self, namespace: str, name: str, statuses: list[dict[str, Any]]) -> None:
        """Each later GET of the RayJob first applies the next status of ``statuses``."""
        self.scripts[(namespace, name)] = list(statuses)

    def add_pod(self, namespace: str, name: str, labels: dict[str, str], *, log: str = "", phase: str = "Running") -> dict[str, Any]:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "uid": str(uuid.uuid4()),
                            "creationTimestamp": _now()},
               "spec": {"containers": [{"name": "ray-job-submitter", "image": "x"}]},
               "status": {"phase": phase}}
        with self._lock:
            self.objects[("pods", namespace, name)] = pod
            self.pod_logs[(namespace, name)] = log
        return pod

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            o = self.objects.get((plural, namespace, name))
            return copy.deepcopy(o) if o else None

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(o) for (p, ns, _), o in self.objects.items() if p == plural and (namespace is None or ns == namespace)]

    # --- the server --------------------------------------------------------------------------------
    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)

    def _respond(self, status: int, body: Any, content_type: str = "application/json") -> rest.RESTResponse:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, bytes):
            data = body
        else:
            data = str(body).encode()
            if content_type == "application/json" and not str(body).startswith("{"):
                content_type = "text/plain; charset=utf-8"
        reason = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                  409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(status, "Error")
        raw = urllib3.HTTPResponse(body=io.BytesIO(data), status=status, reason=reason,
                                   headers={"content-type": content_type}, preload_content=False)
        return rest.RESTResponse(raw)

    def _handle(self, method: str, url: str, headers: dict[str, str], body: Any) -> rest.RESTResponse:
        parts = urlsplit(url)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        if isinstance(body, (str, bytes)):
            try:
                body = json.loads(body)
            except ValueError:
                pass
        with self._lock:
            self.requests.append(_Req(method, path, query, copy.deepcopy(body), dict(headers)))
            for f in list(self.failures):
                if f.method == method and re.search(f.path_regex, path):
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.failures.remove(f)
                    return self._respond(f.status, f.body)
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> rest.RESTResponse:
        for regex, group, _version in _ROUTES:
            m = regex.match(path)
            if not m:
                continue
            g = m.groupdict()
            group = g.get("group") or group or ""
            if group == "ray.io" and not self.crds_installed:
                return self._respond(404, _NOT_FOUND_PAGE, "text/plain; charset=utf-8")
            ns, plural, name = g.get("ns"), g["plural"], g.get("name")
            if ns is not None and ns not in self.namespaces:
                return self._respond(404, _status(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}))
            if g.get("log"):
                return self._pod_log(ns, name, query)
            if name is None:
                if method == "POST":
                    return self._create(plural, group, ns, body)
                if method == "GET":
                    return self._list(plural, group, ns, query)
            else:
                if method == "GET":
                    return self._get(plural, group, ns, name)
                if method == "PATCH":
                    return self._patch(plural, group, ns, name, body)
                if method == "DELETE":
                    return self._delete(plural, group, ns, name)
            return self._respond(405, _status(405, "MethodNotAllowed", f"{method} is not allowed on {path}"))
        return self._respond(404, _NOT_FOUND_PAGE, "text/plain; charset=utf-8")

    def _not_found(self, plural: str, group: str, name: str) -> rest.RESTResponse:
        res = f"{plural}.{group}" if group else plural
        return self._respond(404, _status(404, "NotFound", f'{res} "{name}" not found',
                                          {"name": name, "group": group, "kind": plural}))

    def _invalid(self, plural: str, group: str, name: str, errors: list[str]) -> rest.RESTResponse:
        kind = _KINDS[plural]
        causes = [{"reason": "FieldValueInvalid", "field": e.split(":", 1)[0], "message": e.split(":", 1)[-1].strip()} for e in errors]
        return self._respond(422, _status(422, "Invalid", f'{kind}.{group} "{name}" is invalid: ' + "; ".join(errors),
                                          {"name": name, "group": group, "kind": kind, "causes": causes}))

    def _check(self, plural: str, obj: dict[str, Any]) -> list[str]:
        if not self.validate or plural not in ("rayjobs", "rayservices", "rayclusters"):
            return []
        from aimass.k8s.validation import validate_kuberay_object

        # The real API server prunes unknown fields rather than failing; the strict check is for our tests.
        return validate_kuberay_object(obj, strict=True)

    def _create(self, plural: str, group: str, ns: str, body: dict[str, Any]) -> rest.RESTResponse:
        obj = copy.deepcopy(body or {})
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return self._respond(422, _status(422, "Invalid", "metadata.name: Required value"))
        if (plural, ns, name) in self.objects:
            res = f"{plural}.{group}" if group else plural
            return self._respond(409, _status(409, "AlreadyExists", f'{res} "{name}" already exists',
                                              {"name": name, "group": group, "kind": plural}))
        errors = self._check(plural, obj)
        if errors:
            return self._invalid(plural, group, name, errors)
        meta.update({"namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": _now(), "generation": 1})
        self._bump(obj)
        self.objects[(plural, ns, name)] = obj
        if plural == "rayjobs" and self.on_rayjob_created:
            self.on_rayjob_created(self, obj)
        return self._respond(201, obj)

    def _get(self, plural: str, group: str, ns: str, name: str) -> rest.RESTResponse:
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            return self._not_found(plural, group, name)
        script = self.scripts.get((ns, name))
        if plural == "rayjobs" and script:
            obj["status"] = {**(obj.get("status") or {}), **script.pop(0)}
            self._bump(obj)
        return self._respond(200, obj)

    def _list(self, plural: str, group: str, ns: str | None, query: dict[str, list[str]]) -> rest.RESTResponse:
        selector = (query.get("labelSelector") or [None])[0]
        items = [o for (p, n, _), o in self.objects.items()
                 if p == plural and (ns is None or n == ns) and _match_labels((o.get("metadata") or {}).get("labels") or {}, selector)]
        limit = int((query.get("limit") or [0])[0] or 0)
        if limit:
            items = items[:limit]
        kind = _KINDS[plural] + "List"
        return self._respond(200, {"apiVersion": f"{group}/v1" if group else "v1", "kind": kind,
                                   "metadata": {"resourceVersion": str(self._rv)}, "items": items})

    def _patch(self, plural: str, group: str, ns: str, name: str, patch: Any) -> rest.RESTResponse:
        obj = self.objects.get((plural, ns, name))
        if obj is None:
            return self._not_found(plural, group, name)
        new = _merge_patch(obj, patch)
        errors = self._check(plural, new)
        if errors:
            return self._invalid(plural, group, name, errors)
        if new.get("spec") != obj.get("spec"):
            new["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
        if plural == "rayjobs" and (new.get("spec") or {}).get("suspend") and not (obj.get("spec") or {}).get("suspend"):
            # The operator: stop the job, delete the cluster and the submitter, mark it suspended.
            st = new.setdefault("status", {})
            if st.get("jobDeploymentStatus") not in ("Complete", "Failed"):
                st["jobDeploymentStatus"] = "Suspended"
                st["jobStatus"] = st.get("jobStatus") if st.get("jobStatus") in ("SUCCEEDED", "FAILED") else "STOPPED"
        self._bump(new)
        self.objects[(plural, ns, name)] = new
        return self._respond(200, new)

    def _delete(self, plural: str, group: str, ns: str, name: str) -> rest.RESTResponse:
        obj = self.objects.pop((plural, ns, name), None)
        if obj is None:
            return self._not_found(plural, group, name)
        uid = obj["metadata"].get("uid")
        for key, other in list(self.objects.items()):  # garbage collection of owned objects
            owners = (other.get("metadata") or {}).get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                self.objects.pop(key, None)
        if plural == "rayjobs":  # and the submitter pods the operator made
            for key, other in list(self.objects.items()):
                if key[0] == "pods" and key[1] == ns and (other["metadata"].get("labels") or {}).get("job-name") == name:
                    self.objects.pop(key, None)
        return self._respond(200, _status(200, "", "deleted") | {"status": "Success"})

    def _pod_log(self, ns: str, name: str, query: dict[str, list[str]]) -> rest.RESTResponse:
        pod = self.objects.get(("pods", ns, name))
        if pod is None:
            return self._not_found("pods", "", name)
        if pod["status"].get("phase") == "Pending":
            return self._respond(400, _status(400, "BadRequest",
                                              f'container "ray-job-submitter" in pod "{name}" is waiting to start: ContainerCreating'))
        text = self.pod_logs.get((ns, name), "")
        tail = query.get("tailLines")
        if tail:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail[0]):])
        return self._respond(200, text.encode(), "text/plain; charset=utf-8")
