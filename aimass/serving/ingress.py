"""The HTTP ingress: Open Inference Protocol (V2) routes, auth, body limits, validation, routing, canary.

Every request passes, in order: bearer-token check (401), ``Content-Length`` check (413, before a
byte of the body is read), streamed body read with the same limit (413 for chunked bodies), JSON and
schema parsing (400), validation against the model's signature (400/413), then the model call with a
bounded queue (503/429 at once when full), one transparent retry if the replica died, and a timeout
(504). Canary traffic that fails falls back to the champion, so clients do not see the challenger's
errors; the challenger's window decides a rollback.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # module level: route annotations are resolved in this module's globals
from ray import serve

from aimass.exceptions import AimassError, AuthError, InvalidRequestError, NotFoundError, ServingError
from aimass.serving.auth import TokenAuth
from aimass.serving.batching import OverloadedError, RowBatcher
from aimass.serving.canary import CanaryMonitor
from aimass.serving.colocate import LocalCopies
from aimass.serving.config import ServeConfig
from aimass.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from aimass.serving.protocol import (
    BINARY_HEADER,
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    PayloadTooLargeError,
    ServerMetadataResponse,
    Signature,
    decode_request,
    encode_outputs,
    error_body,
    validate_inputs,
)

__all__ = ["Ingress"]

log = logging.getLogger("aimass.serving")

#: The id of the request being served (set by the ASGI guard; in every error body and X-Request-Id).
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("aimass_request_id", default=None)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: The metric label of every model or version name that is not served here (a caller cannot grow the series).
UNKNOWN_LABEL = "_unknown"


def _request_id(headers: dict[bytes, bytes]) -> str:
    """The caller's X-Request-Id when it is short and plain (no log injection), else a new one."""
    given = headers.get(b"x-request-id")
    if given:
        v = given.decode("latin-1")
        if _SAFE_ID.match(v):
            return v
    return uuid.uuid4().hex


class UnavailableError(ServingError):
    code = "unavailable"
    http_status = 503


class TimeoutServingError(ServingError):
    code = "timeout"
    http_status = 504


@dataclass
class Target:
    version: str
    deployment: str
    registered: str
    model_id: str | None = None  # multiplexed model id


@dataclass
class Route:
    name: str
    champion: Target
    challenger: Target | None = None
    share: float = 0.0
    monitor: CanaryMonitor | None = None
    max_rows: int = 4096
    allow_non_finite: bool = False
    versions: list[str] = field(default_factory=list)
    batch_rows: int = 0  # 0: no batching in the ingress
    batch_wait_s: float = 0.0
    max_queued: int = 256
    colocate: bool = False  # answer the champion from a copy loaded in this replica once it is ready

    def target(self, version: str | None) -> tuple[Target, bool]:
        """(target, is_canary_split). An explicit version must be one that is served."""
        if version is not None:
            if version == self.champion.version:
                return self.champion, False
            if self.challenger is not None and version == self.challenger.version:
                return self.challenger, False
            raise NotFoundError(f"model {self.name!r} has no served version {version!r}",
                                fix=f"Served versions: {', '.join(self.versions)}.")
        if self.challenger is not None and random.random() < self.share:
            return self.challenger, True
        return self.champion, False


_REPLICA_GONE: tuple[type[BaseException], ...] = ()


def _replica_gone_errors() -> tuple[type[BaseException], ...]:
    global _REPLICA_GONE
    if not _REPLICA_GONE:
        import ray.exceptions as rex
        from ray.serve.exceptions import ReplicaUnavailableError

        errs = [rex.RayActorError, ReplicaUnavailableError]
        for n in ("ActorDiedError", "ActorUnavailableError"):
            if hasattr(rex, n):
                errs.append(getattr(rex, n))
        _REPLICA_GONE = tuple(errs)
    return _REPLICA_GONE


@serve.ingress()
class Ingress:
    """The V2 ingress deployment. Init args are the model deployments (bound only so they are part of
    the application); routing comes from ``user_config`` = {"config": ServeConfig doc, "plan": plan}."""

    def __init__(self, *model_deployments: Any) -> None:
        ctx = serve.get_replica_context()
        self.app_name = ctx.app_name
        self.metrics = ServingMetrics()
        self.cfg: ServeConfig | None = None
        self.auth: TokenAuth | None = None
        self.routes: dict[str, Route] = {}
        self.max_request_bytes = 8 * 1024 * 1024
        self.timeout_s = 30.0
        self.queue_wait_s = 1.0
        self.overload_status = 503
        self._handles: dict[tuple[str, str | None], Any] = {}
        self._signatures: dict[tuple[str, str | None], Signature] = {}
        self._tripped: dict[tuple[str, str], dict[str, Any]] = {}
        self._monitors: dict[tuple[str, str], CanaryMonitor] = {}
        self._bg: set[asyncio.Task] = set()
        self._batchers: dict[tuple[Any, ...], RowBatcher] = {}
        # colocated champions: (registered, version) -> model loaded in this replica, retried when a load fails
        self._copies = LocalCopies(self._load_local, name=lambda k: f"{k[0]} v{k[1]}")
        self._pool: Any = None  # the colocated models' worker thread, made on first use
        self._endpoints: list[str] = []
        self._endpoints_at = float("-inf")

    # -- configuration -----------------------------------------------------------------------------
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        cfg = ServeConfig.model_validate(user_config["config"])
        plan = user_config["plan"]
        auth = TokenAuth(cfg.auth.mode, cfg.auth.token_file)
        routes: dict[str, Route] = {}
        monitors: dict[tuple[str, str], CanaryMonitor] = {}
        for m in cfg.models:
            entry = plan["models"].get(m.name)
            if entry is None:
                continue
            ch = entry["champion"]
            route = Route(m.name, Target(ch["version"], ch["deployment"], entry["registered"]), max_rows=m.max_rows_per_request,
                          allow_non_finite=m.allow_non_finite, batch_rows=m.batching.max_batch_size if m.batching.enabled else 0,
                          batch_wait_s=m.batching.batch_wait_timeout_s, max_queued=m.deployment.max_queued_requests,
                          colocate=m.colocate)
            route.versions = [ch["version"]]
            c = entry.get("challenger")
            if c and m.canary is not None:
                key = (m.name, c["version"])
                route.challenger = Target(c["version"], c["deployment"], c.get("registered", entry["registered"]))
                route.share = 0.0 if key in self._tripped else m.canary.traffic_share
                mon = self._monitors.get(key) or CanaryMonitor(m.canary.max_error_rate, m.canary.max_p99_latency_ms,
                                                               m.canary.window_s, m.canary.min_requests)
                monitors[key] = mon
                route.monitor = mon
                route.versions.append(c["version"])
                self.metrics.canary_share.labels(m.name, c["version"]).set(route.share)
            routes[m.name] = route
        mx = plan.get("multiplex")
        if cfg.multiplex and mx:
            for mm in cfg.multiplex.models:
                e = mx["models"].get(mm.name)
                if e is None:
                    continue
                t = Target(e["version"], mx["deployment"], e["registered"], model_id=f"{mm.name}:{e['version']}")
                routes[mm.name] = Route(mm.name, t, max_rows=mm.max_rows_per_request, allow_non_finite=mm.allow_non_finite,
                                        versions=[e["version"]],
                                        batch_rows=cfg.multiplex.batching.max_batch_size if cfg.multiplex.batching.enabled else 0,
                                        max_queued=cfg.multiplex.deployment.max_queued_requests)
        self.cfg, self.auth, self.routes, self._monitors = cfg, auth, routes, monitors
        self._colocate(cfg, routes)
        self.max_request_bytes = cfg.max_request_bytes
        self.timeout_s = cfg.ingress.request_timeout_s
        self.queue_wait_s = cfg.ingress.max_queue_wait_s
        for b in self._batchers.values():
            b.max_wait_s = self.queue_wait_s
        self.overload_status = cfg.ingress.overload_status
        log.info("ingress %s routes: %s", self.app_name,
                 {n: (r.champion.version, r.challenger.version if r.challenger else None, r.share) for n, r in routes.items()})

    def _colocate(self, cfg: ServeConfig, routes: dict[str, Route]) -> None:
        """Load the champions of ``colocate`` routes in the background; drop copies no route needs.

        Until a copy is loaded (and passed its warm-up), the route keeps calling the model deployment,
        which has already passed its readiness check, so a rollout never waits on the ingress. A copy
        that fails to load is retried with backoff (:class:`~aimass.serving.colocate.LocalCopies`)."""
        wanted = {(r.champion.registered, r.champion.version) for r in routes.values() if r.colocate}
        if wanted and self._pool is None:
            import torch

            from aimass.serving.model import model_thread

            threads = max(1, int(cfg.ingress.num_cpus or 1))
            torch.set_num_threads(threads)  # the inline (unbatched) calls run on the event loop's thread
            self._pool = model_thread(threads)
        self._copies.want(wanted)
        for key in list(self._batchers):  # a retired copy's batcher holds it too
            if key[0] == "local" and key[1:3] not in wanted:
                self._batchers.pop(key, None)

    def _load_local(self, key: tuple[str, str]) -> Any:
        from aimass.serving.model import load_registered

        cfg = self.cfg
        return load_registered(key[0], key[1], cfg.tracking_uri if cfg else None, cfg.registry_uri if cfg else None, "cpu")

    def _local_model(self, route: Route, t: Target) -> Any:
        if not route.colocate or t is not route.champion:
            return None
        return self._copies.get((t.registered, t.version))

    def check_health(self) -> None:
        if self.cfg is None or self.auth is None:
            raise ServingError("ingress not configured")

    # -- model calls -------------------------------------------------------------------------------
    def _handle(self, t: Target):
        key = (t.deployment, t.model_id)
        h = self._handles.get(key)
        if h is None:
            h = serve.get_deployment_handle(t.deployment, app_name=self.app_name)
            if t.model_id is not None:
                h = h.options(multiplexed_model_id=t.model_id)
            self._handles[key] = h
        return h

    async def _call(self, t: Target, method: str, *args: Any) -> Any:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        gone = _replica_gone_errors()
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout_s):  # no extra task per call, unlike wait_for
                    return await getattr(self._handle(t), method).remote(*args)
            except BackPressureError:
                raise OverloadedError(f"model {t.registered} v{t.version} is at capacity (its request queue is full)",
                                      fix="Retry after a short pause, or raise replicas / maxQueuedRequests.") from None
            except TimeoutError:
                raise TimeoutServingError(f"model {t.registered} v{t.version} did not answer within {self.timeout_s:g}s",
                                          fix="Raise ingress.requestTimeoutS or add replicas.") from None
            except DeploymentUnavailableError:
                raise UnavailableError(f"model {t.registered} v{t.version} is not available (its deployment failed)") from None
            except AimassError:
                raise
            except gone as e:
                if attempt == 2:
                    raise UnavailableError(f"model {t.registered} v{t.version}: replica unavailable ({type(e).__name__})",
                                           retryable=True) from None
                # the router has already dropped the dead replica: one retry lands on a live one
                continue
        raise AssertionError("unreachable")

    async def _predict(self, route: Route, t: Target, x: Any) -> Any:
        lm = self._local_model(route, t)
        if lm is not None:
            return await self._predict_local(route, lm, x)
        if route.batch_rows and x.shape[0] <= route.batch_rows:
            key = (t.deployment, t.model_id, route.batch_rows, route.max_queued)
            b = self._batchers.get(key)
            if b is None:
                # up to 4 calls overlap the network; the model replica merges them again
                b = self._batchers[key] = RowBatcher(lambda arr, t=t: self._call(t, "predict", arr), route.batch_rows,
                                                     max_queued=route.max_queued, max_inflight=4,
                                                     what=f"{t.registered} v{t.version}", once=("cache_events",),
                                                     max_wait_s=self.queue_wait_s)
            return await b.submit(x)
        return await self._call(t, "predict", x)

    async def _predict_local(self, route: Route, lm: Any, x: Any) -> Any:
        """The colocated champion: inline without batching (no thread hop for small models); with
        batching, continuous batches in one worker thread while the event loop keeps taking requests."""
        if not route.batch_rows or x.shape[0] > route.batch_rows:
            return lm.predict(x), {"batch_rows": int(x.shape[0]), "batch_requests": 1}
        key = ("local", lm.registered, lm.version, route.batch_rows, route.max_queued, route.batch_wait_s)
        b = self._batchers.get(key)
        if b is None:
            from aimass.serving.model import predict_batcher

            b = self._batchers[key] = predict_batcher(lm, self._pool, route.batch_rows, wait_s=route.batch_wait_s,
                                                      max_queued=route.max_queued)
            b.max_wait_s = self.queue_wait_s
        try:
            async with asyncio.timeout(self.timeout_s):
                return await b.submit(x)
        except TimeoutError:
            raise TimeoutServingError(f"model {lm.registered} v{lm.version} did not answer within {self.timeout_s:g}s",
                                      fix="Raise ingress.requestTimeoutS or add ingress replicas.") from None

    async def signature(self, t: Target) -> Signature:
        key = (t.deployment, t.model_id)
        sig = self._signatures.get(key)
        if sig is None:
            meta = await self._call(t, "metadata")
            self._record_cache_events(meta.get("cache_events"))
            sig = Signature.from_dict(meta["signature"])
            self._signatures[key] = sig
        return sig

    def _record_cache_events(self, events: list | None) -> None:
        for ev, mid in events or ():
            name, _, version = mid.rpartition(":")
            self.metrics.cache.labels(name, version, ev).inc()

    # -- the infer path ----------------------------------------------------------------------------
    async def infer(self, name: str, version: str | None, body: bytes,
                    binary_header: str | None = None) -> tuple[int, dict[str, Any] | bytes, dict[str, str]]:
        """One inference request -> (status, JSON document or encoded binary-extension body, headers)."""
        t0 = time.perf_counter()
        route = self.routes.get(name)
        if route is None:
            raise NotFoundError(f"no model named {name!r} is served here", fix=f"Served models: {', '.join(sorted(self.routes)) or 'none'}.")
        dec = decode_request(body, binary_header)
        req = dec.request
        if req.model_name is not None and req.model_name != name:
            raise InvalidRequestError(f"the body names model {req.model_name[:80]!r} but the path names {name!r}",
                                      location="model_name", fix="Drop model_name from the body, or post to that model's path.")
        if req.model_version is not None:
            if version is not None and req.model_version != version:
                raise InvalidRequestError(f"the body names version {req.model_version[:80]!r} but the path names {version!r}",
                                          location="model_version", fix="Drop model_version from the body, or make them agree.")
            version = req.model_version
        target, split = route.target(version)
        sig = await self.signature(route.champion if split else target)
        arrays = validate_inputs(req, sig, max_rows=route.max_rows, allow_non_finite=route.allow_non_finite, binary=dec.binary)
        x = arrays[sig.inputs[0].name]
        served = target
        queue = self.metrics.child(self.metrics.queue, name, target.version)
        queue.inc()
        try:
            c0 = time.perf_counter()
            judged = split or (route.monitor is not None and target is route.challenger)  # pinned requests count too
            try:
                probs, info = await self._predict(route, target, x)
            except TimeoutServingError:
                # a challenger that hangs trips the canary like one that fails; the request has used its
                # time budget, so it is not retried on the champion (the client may retry)
                if judged:
                    self._canary_outcome(route, target, False, time.perf_counter() - c0)
                raise
            except Exception as e:  # noqa: BLE001 - any challenger failure (its own full queue included) counts
                if judged:
                    self._canary_outcome(route, target, False, time.perf_counter() - c0)
                if not split:
                    raise
                log.warning("canary %s v%s failed (%s); answering from the champion", name, target.version, e)
                served = route.champion
                probs, info = await self._predict(route, served, x)
            else:
                if judged:
                    self._canary_outcome(route, target, True, time.perf_counter() - c0)
        finally:
            queue.dec()
        self._record_cache_events(info.get("cache_events"))
        if info.get("cache") == "hit":
            self.metrics.cache.labels(name, served.version, "hit").inc()
        self.metrics.child(self.metrics.batch_size, name, served.version).observe(info.get("batch_rows", x.shape[0]))
        out_name = sig.outputs[0].name
        outputs, blobs = encode_outputs({out_name: probs}, req.outputs,
                                        binary_default=bool((req.parameters or {}).get("binary_data_output")))
        resp = {"model_name": name, "model_version": served.version, "id": req.id, "outputs": outputs}
        if sig.class_names:
            resp["parameters"] = {"class_names": list(sig.class_names)}
        self.metrics.child(self.metrics.latency, name, served.version).observe(time.perf_counter() - t0)
        self.metrics.child(self.metrics.requests, name, served.version, "200").inc()
        if blobs:
            head = json.dumps(resp).encode()
            return 200, b"".join([head, *blobs]), {BINARY_HEADER: str(len(head)), "Content-Type": "application/octet-stream"}
        return 200, resp, {}

    def labels(self, model: str, ver: str) -> tuple[str, str]:
        """Metric labels for a request: names served here as they are, anything else ``_unknown``, so
        the number of series is bounded by what is deployed, whatever callers send."""
        route = self.routes.get(model)
        if route is None:
            return (UNKNOWN_LABEL if model != "-" else "-"), ("-" if ver == "-" else UNKNOWN_LABEL)
        return model, ver if ver == "-" or ver in route.versions else UNKNOWN_LABEL

    def error_response(self, e: Exception, model: str = "-", ver: str = "-") -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers) of a failed request; counts it in the metrics.

        An :class:`AimassError` answers its own status and message. Anything else is a 500 with a
        generic message and the request id; the detail (with the traceback) goes to the log only."""
        rid = _REQUEST_ID.get()
        if isinstance(e, AimassError):
            status = e.http_status
            if isinstance(e, OverloadedError):
                status = self.overload_status
            kind = {401: "auth", 503: "overload", 429: "overload", 504: "timeout"}.get(status, "client" if status < 500 else "server")
        else:
            log.error("unexpected error serving model %.100r (request %s)", model, rid, exc_info=e)
            status, kind = 500, "server"
        m, v = self.labels(model, ver)
        self.metrics.errors.labels(m, v, kind).inc()
        self.metrics.requests.labels(m, v, str(status)).inc()
        headers = {"Retry-After": "1"} if status in (429, 503) else {}
        if rid:
            headers["X-Request-Id"] = rid
        return status, error_body(e, rid), headers

    # -- canary ------------------------------------------------------------------------------------
    def _canary_outcome(self, route: Route, t: Target, ok: bool, latency_s: float) -> None:
        if route.monitor is None or route.challenger is None:
            return
        v = route.monitor.record(ok, latency_s)
        key = (route.name, t.version)
        if v.breached and key not in self._tripped:
            info = {**v.to_dict(), "model": route.name, "registered": t.registered, "version": t.version,
                    "champion_version": route.champion.version, "at": time.time(), "app": self.app_name}
            self._tripped[key] = info
            route.share = 0.0  # stop now; the controller makes it permanent
            self.metrics.canary_share.labels(route.name, t.version).set(0.0)
            self.metrics.rollbacks.labels(route.name, t.version).inc()
            log.warning("canary %s v%s rolled back: %s", route.name, t.version, v.reason)
            task = asyncio.get_running_loop().create_task(self._report_rollback(info))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

    async def _report_rollback(self, info: dict[str, Any]) -> None:
        from aimass.serving.controller import notify_rollback

        try:
            await asyncio.to_thread(notify_rollback, self.app_name, info, self.cfg.tracking_uri if self.cfg else None,
                                    self.cfg.registry_uri if self.cfg else None)
        except Exception:  # noqa: BLE001 - the traffic is already off the challenger
            log.exception("could not record the rollback of %s v%s", info["model"], info["version"])

    # -- metadata and health -----------------------------------------------------------------------
    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        route = self.routes.get(name)
        if route is None:
            raise NotFoundError(f"no model named {name!r} is served here", fix=f"Served models: {', '.join(sorted(self.routes)) or 'none'}.")
        t, _ = route.target(version) if version is not None else (route.champion, False)
        sig = await self.signature(t)
        doc = {"name": name, "versions": list(route.versions) if version is None else [t.version], "platform": "pytorch",
               "inputs": [s.to_dict() for s in sig.inputs], "outputs": [s.to_dict() for s in sig.outputs],
               "parameters": {"class_names": list(sig.class_names), "registered_model": t.registered, "version": t.version}}
        if route.colocate and t is route.champion:
            st = self._copies.status((t.registered, t.version))
            doc["parameters"]["colocated"] = st["state"] == "loaded"  # answered from this ingress replica
            if st["state"] == "failed":  # answered by the model deployment meanwhile
                doc["parameters"]["colocate_error"] = {k: st[k] for k in ("error", "attempts", "retry_in_s")}
        if version is None and route.challenger is not None:
            doc["parameters"]["canary"] = {"version": route.challenger.version, "traffic_share": route.share}
        return doc

    async def model_ready(self, name: str, version: str | None) -> bool:
        route = self.routes.get(name)
        if route is None:
            raise NotFoundError(f"no model named {name!r} is served here")
        t, _ = route.target(version) if version is not None else (route.champion, False)
        try:
            await asyncio.wait_for(self.signature(t), min(self.timeout_s, 10.0))
            return True
        except Exception:  # noqa: BLE001 - not ready, whatever the reason
            return False

    async def endpoints(self) -> list[str]:
        """The direct URLs of this application's ingress replicas (what clients fall back on), asked of
        the Serve controller at most every 5 s, off the event loop; [] when it cannot tell."""
        if time.monotonic() - self._endpoints_at > 5.0:
            self._endpoints_at = time.monotonic()
            try:
                self._endpoints = await asyncio.wait_for(asyncio.to_thread(self._direct_urls), 5.0)
            except Exception as e:  # noqa: BLE001 - the stable URL still works; clients just have no fallback
                log.debug("cannot list the direct URLs: %s", e)
        return self._endpoints

    def _direct_urls(self) -> list[str]:
        from ray.serve.context import _get_global_client

        from aimass.serving.deploy import direct_urls

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return []
        http = client.get_serve_details().get("http_options") or {}
        return direct_urls(self.app_name, {"host": http.get("host", "127.0.0.1"), "port": int(http.get("port", 8000))},
                           self.cfg.route_prefix if self.cfg else "/")

    async def server_ready(self) -> bool:
        if not self.routes:
            return False
        results = await asyncio.gather(*(self.model_ready(n, None) for n in self.routes))
        return all(results)

    def __serve_build_asgi_app__(self):
        return build_asgi_app(self)


# -- HTTP ------------------------------------------------------------------------------------------
class _Guard:
    """Pure ASGI middleware in front of every route: request id, auth, then the Content-Length limit.

    Whatever happens below it, the client gets a V2 error body with the request id: an exception that
    escapes the app before a response started becomes a generic 500 (the detail is logged)."""

    def __init__(self, app: Any, ingress: Ingress) -> None:
        self.app = app
        self.ingress = ingress

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or ()}
        rid = _request_id(headers)
        tok = _REQUEST_ID.set(rid)
        try:
            await self._serve(scope, receive, send, headers, rid)
        finally:
            _REQUEST_ID.reset(tok)

    async def _serve(self, scope, receive, send, headers: dict[bytes, bytes], rid: str) -> None:
        ing = self.ingress
        try:
            if ing.auth is None:
                raise UnavailableError("the ingress is starting", retryable=True)
            authz = headers.get(b"authorization")
            client = scope.get("client") or (None, None)
            ing.auth.check(authz.decode("latin-1") if authz else None, client[0])
            cl = headers.get(b"content-length")
            if cl is not None:
                try:
                    n = int(cl)
                except ValueError:
                    raise InvalidRequestError("Content-Length is not a number", got=cl.decode("latin-1")[:40]) from None
                if n > ing.max_request_bytes:
                    raise PayloadTooLargeError(f"request body of {n} bytes is over the limit of {ing.max_request_bytes}",
                                               fix="Send smaller batches, or raise maxRequestBytes in the serving config.")
        except AimassError as e:
            kind = "auth" if isinstance(e, AuthError) else "overload" if e.http_status == 503 else "client"
            ing.metrics.errors.labels("-", "-", kind).inc()
            extra = {"WWW-Authenticate": 'Bearer realm="aimass"'} if isinstance(e, AuthError) else {}
            if e.http_status in (429, 503):
                extra["Retry-After"] = "1"
            await _send(send, e.http_status, error_body(e, rid), {**extra, "X-Request-Id": rid})
            return
        if scope.get("method") == "POST":
            # the hot path skips FastAPI's routing and request objects (the route stays declared for OpenAPI)
            path, root = scope.get("path", ""), scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            m = _INFER_PATH.match(path)
            if m is not None:
                await self._infer(m.group(1), m.group(2), headers.get(b"inference-header-content-length"), receive, send)
                return
        started = False

        async def send_with_id(msg) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                hdrs = list(msg.get("headers", ()))
                if not any(k.lower() == b"x-request-id" for k, _ in hdrs):
                    msg = {**msg, "headers": [*hdrs, (b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as e:  # noqa: BLE001 - never a traceback or plain text to the client
            if started:  # the app's own 500 handler answered already (and logged)
                return
            status, body, hdrs = ing.error_response(e)
            await _send(send, status, body, hdrs)

    async def _infer(self, name: str, version: str | None, binary_header: bytes | None, receive, send) -> None:
        ing = self.ingress
        try:
            chunks, size = [], 0
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > ing.max_request_bytes:
                    raise PayloadTooLargeError(f"request body is over the limit of {ing.max_request_bytes} bytes",
                                               fix="Send smaller batches, or raise maxRequestBytes in the serving config.")
                chunks.append(chunk)
                if not msg.get("more_body"):
                    break
            status, body, headers = await ing.infer(name, version, b"".join(chunks),
                                                    binary_header.decode("latin-1") if binary_header is not None else None)
        except Exception as e:  # noqa: BLE001 - every failure becomes a V2 error response
            status, body, headers = ing.error_response(e, name, version or "-")
        await _send(send, status, body, headers)


_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer/?$")


async def _send(send, status: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> None:
    """One complete response: a JSON document, or bytes whose Content-Type is in ``headers``."""
    headers = dict(headers or {})
    if isinstance(body, bytes):
        data = body
        ctype = headers.pop("Content-Type", "application/octet-stream")
    else:
        data, ctype = json.dumps(body).encode(), "application/json"
    raw = [(b"content-type", ctype.encode()), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def _read_body(request, limit: int) -> bytes:
    """The body, counted while it streams: a chunked upload over the limit stops at the limit (413)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes",
                                       fix="Send smaller batches, or raise maxRequestBytes in the serving config.")
        chunks.append(chunk)
    return b"".join(chunks)


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


def build_asgi_app(ing: Ingress):
    """The FastAPI app of one ingress replica (routes close over the replica's state)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import aimass

    class ServerReady(BaseModel):
        ready: bool

    class ModelReady(BaseModel):
        name: str
        ready: bool

    class Live(BaseModel):
        live: bool

    version = getattr(aimass, "__version__", "0.1.0")
    # every route: the token (401), and the generic error of an unexpected failure (500)
    common = {401: _err("Missing or wrong bearer token (`WWW-Authenticate: Bearer`)."),
              500: _err("Unexpected server error: a generic message and the request id (the detail is in the server log)."),
              503: _err("The ingress is starting or overloaded (retry after `Retry-After` seconds).")}
    app = FastAPI(title="AI Mass inference", version=version,
                  description="Open Inference Protocol (KServe V2) over REST, with the binary tensor data extension. "
                              "Every endpoint needs `Authorization: Bearer <token>` unless the deployment runs in local mode. "
                              "Every error is `{\"error\": ..., \"code\": ..., \"fix\": ..., \"location\": ..., \"request_id\": ...}`.",
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json", responses=common)

    def fail(e: Exception, model: str = "-", ver: str = "-") -> Response:
        status, body, headers = ing.error_response(e, model, ver)
        return JSONResponse(body, status_code=status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        # unmatched paths (404) and methods (405, with its Allow header) in the V2 error shape
        e = NotFoundError(f"no route {request.url.path[:200]!r}", fix="See GET /openapi.json for the routes.") \
            if exc.status_code == 404 else InvalidRequestError(str(exc.detail)[:200])
        e.http_status = exc.status_code
        _, body, headers = ing.error_response(e)
        return JSONResponse(body, status_code=exc.status_code, headers={**(exc.headers or {}), **headers})

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        err = (exc.errors() or [{}])[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return fail(InvalidRequestError(f"invalid request: {loc}: {err.get('msg', 'invalid')}", location=loc))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        return fail(exc)

    not_served = {404: _err("No such model or version is served here.")}
    infer_err = {400: _err("Malformed request or input that does not fit the model's signature."), **not_served,
                 413: _err("Body or tensor over the limits."), 429: _err("Overloaded (when configured to answer 429)."),
                 504: _err("The model did not answer within the request timeout.")}
    infer_body = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": f"Binary tensor data extension: `{BINARY_HEADER}` bytes of JSON, then the tensors."}}}}
    infer_ok = {200: {"description": "The outputs (JSON, or with the binary extension JSON then tensor bytes).",
                      "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.get("/v2/health/live", tags=["health"], summary="Server liveness", response_model=Live)
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], summary="Server readiness (every model's champion answers)",
             response_model=ServerReady, responses={503: {"model": ServerReady, "description": "Not ready (or starting, with an error body)."}})
    async def ready():
        ok = await ing.server_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", tags=["metadata"], summary="Server metadata", response_model=ServerMetadataResponse)
    async def server_metadata():
        return {"name": "aimass", "version": version, "extensions": ["binary_tensor_data"], "endpoints": await ing.endpoints()}

    @app.get("/v2/models/{name}", tags=["metadata"], summary="Model metadata (from the MLflow signature)",
             response_model=ModelMetadataResponse, responses={**not_served, 504: infer_err[504]})
    async def model_metadata(name: str):
        try:
            return await ing.model_metadata(name, None)
        except Exception as e:  # noqa: BLE001
            return fail(e, name)

    @app.get("/v2/models/{name}/versions/{version}", tags=["metadata"], summary="Model version metadata",
             response_model=ModelMetadataResponse, responses={**not_served, 504: infer_err[504]})
    async def model_version_metadata(name: str, version: str):
        try:
            return await ing.model_metadata(name, version)
        except Exception as e:  # noqa: BLE001
            return fail(e, name, version)

    async def _ready(name: str, version: str | None):
        try:
            ok = await ing.model_ready(name, version)
        except Exception as e:  # noqa: BLE001
            return fail(e, name, version or "-")
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    ready_doc = {**not_served, 503: {"model": ModelReady, "description": "Served but not ready (or the ingress is starting, "
                                                                          "with an error body)."}}

    @app.get("/v2/models/{name}/ready", tags=["health"], summary="Model readiness", response_model=ModelReady, responses=ready_doc)
    async def model_ready(name: str):
        return await _ready(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["health"], summary="Model version readiness",
             response_model=ModelReady, responses=ready_doc)
    async def model_version_ready(name: str, version: str):
        return await _ready(name, version)

    async def _infer(request: Request, name: str, version: str | None):
        try:
            body = await _read_body(request, ing.max_request_bytes)
            status, resp, headers = await ing.infer(name, version, body, request.headers.get(BINARY_HEADER))
        except Exception as e:  # noqa: BLE001
            return fail(e, name, version or "-")
        if isinstance(resp, bytes):
            headers = dict(headers)
            return Response(resp, status_code=status, media_type=headers.pop("Content-Type"), headers=headers)
        return Response(json.dumps(resp), status_code=status, media_type="application/json", headers=headers or None)

    @app.post("/v2/models/{name}/infer", tags=["inference"], summary="Inference", response_model=InferenceResponse,
              responses={**infer_ok, **infer_err}, openapi_extra=infer_body)
    async def infer(request: Request, name: str):
        return await _infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["inference"], summary="Inference on a given version",
              response_model=InferenceResponse, responses={**infer_ok, **infer_err}, openapi_extra=infer_body)
    async def infer_version(request: Request, name: str, version: str):
        return await _infer(request, name, version)

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics of this ingress replica", response_class=Response,
             responses={200: {"description": "Prometheus text exposition format.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics():
        return Response(ing.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for ops in schema.get("paths", {}).values():  # request validation errors are 400 (V2), never FastAPI's 422
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
        for k in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(k, None)
        req = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for k, v in req.pop("$defs", {}).items():
            comps.setdefault(k, v)
        comps["InferenceRequest"] = req
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
    return _Guard(app, ing)
