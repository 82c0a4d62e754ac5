"""Deploy, inspect and remove serving applications. The only module that calls ``serve.run``/``serve.delete``.

:func:`deploy` needs a connected Ray (``aimass.orchestrator.ray_runtime.ensure_ray()`` or a Ray task).
It starts Serve's HTTP proxy if needed (loopback by default), makes sure a token exists, and hands the
config to the application's rollout controller (:mod:`aimass.serving.controller`), which stages,
switches and retires deployments so a new version is live only once it is ready.

Example:
    >>> from aimass.orchestrator.ray_runtime import ensure_ray
    >>> from aimass.serving import ServeConfig, ModelSpec
    >>> from aimass.serving.deploy import deploy, status
    >>> ensure_ray()                                                          # doctest: +SKIP
    >>> deploy(ServeConfig(models=[ModelSpec(name="digits", model_uri="models:/digits@champion")]))  # doctest: +SKIP
    >>> status()["apps"][0]["models"]                                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from aimass.exceptions import AimassError, ServingError
from aimass.serving.auth import ENV_TOKEN, ENV_TOKEN_FILE, ensure_token_file, is_loopback
from aimass.serving.config import ServeConfig

__all__ = ["deploy", "status", "shutdown", "default_token_file", "serve_url", "with_model", "DEFAULT_HTTP_HOST"]

log = logging.getLogger("aimass.serving")

DEFAULT_HTTP_HOST = os.environ.get("AIMASS_SERVE_HOST", "127.0.0.1")
_LOGGING = {"enable_access_log": False, "log_level": "WARNING"}


# -- the only serve.run / serve.delete calls ----------------------------------------------------------
def _run_graph(app: str, cfg: ServeConfig, plan: dict[str, Any], deps: dict[str, Any], deadline: float,
               probe: list[str]) -> None:
    """Deploy one complete graph and wait until it runs; then probe the listed model deployments."""
    from ray.serve.api import RunTarget, run_many

    from aimass.serving.app import build_application

    target = RunTarget(target=build_application(cfg, plan, deps), name=app, route_prefix=cfg.route_prefix, logging_config=_LOGGING)
    run_many([target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    _wait_running(app, list(deps), deadline)
    for name in probe:
        _probe(app, name, deps[name], deadline)


def _delete_app(app: str) -> None:
    from ray import serve

    try:
        serve.delete(app, _blocking=True)
    except Exception:  # noqa: BLE001 - best effort: nothing to delete
        log.debug("delete %s", app, exc_info=True)


def _app_exists(app: str) -> bool:
    from ray import serve

    return app in serve.status().applications


def _wait_running(app: str, deployments: list[str], deadline: float) -> None:
    from ray import serve

    last = ""
    while True:
        st = serve.status().applications.get(app)
        if st is not None:
            deps = st.deployments
            failed = {n: d for n, d in deps.items() if str(d.status).endswith("DEPLOY_FAILED")}
            if failed:
                n, d = next(iter(failed.items()))
                raise ServingError(f"deployment {n} failed to start: {_clean(d.message)}")
            missing = [n for n in deployments if n not in deps]
            if str(st.status).endswith("RUNNING") and not missing and all(str(d.status).endswith("HEALTHY") for d in deps.values()):
                return
            if str(st.status).endswith("DEPLOY_FAILED"):
                raise ServingError(f"application {app} failed to deploy: {_clean(st.message)}")
            last = f"{st.status}: " + ", ".join(f"{n}={d.status}" + (f" ({_clean(d.message)[:300]})" if d.message else "")
                                                  for n, d in deps.items())
        if time.monotonic() > deadline:
            raise ServingError(f"application {app} did not become ready in time ({last})",
                               fix="Check resources (`ray status`) and the replica logs; raise rolloutTimeoutS for slow models.")
        time.sleep(0.25)


def _probe(app: str, name: str, dep: Any, deadline: float) -> None:
    """Readiness through the real request path: a warm-up inference on each new version.

    The probe runs in the long-lived rollout controller, which probes a deployment of the same name
    again on every scale, roll-out and roll-back. ``serve.get_deployment_handle`` returns a handle
    cached per process, and a handle can be set up (``_init``) only once, so the probe builds a handle
    of its own each time and shuts its router down afterwards.
    """
    from ray.serve.handle import DeploymentHandle

    h: DeploymentHandle = DeploymentHandle(name, app)
    # This runs outside an event loop: the handle's router gets a loop of its own (Serve's throughput mode
    # puts routers on the caller's loop, which a blocking caller does not have).
    h._init(_run_router_in_separate_loop=True)
    try:
        # A multiplexed deployment loads its models on demand: each one is loaded and answers once here, so a
        # broken version fails the rollout instead of the first requests after the switch.
        probes = ([(f" for {served}", h.options(multiplexed_model_id=f"{served}:{m['version']}"))
                   for served, m in dep.init["models"].items()] if dep.kind == "multiplex" else [("", h)])
        for what, handle in probes:
            try:
                handle.ready.remote().result(timeout_s=max(5.0, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001
                raise ServingError(f"deployment {name} failed its readiness probe{what}: {e}") from None
    finally:
        try:
            h.shutdown()
        except Exception:  # noqa: BLE001 - the probe's answer stands; a router that will not stop is only logged
            log.debug("shutting down the probe handle of %s", name, exc_info=True)


def _clean(msg: str | None) -> str:
    msg = msg or ""
    # keep the replica's own error line, not pages of traceback
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if "Error" in lines[i] or "error" in lines[i]:
            head = lines[i].strip()
            if head.endswith(":") and i + 1 < len(lines):  # "Error(s) in loading state_dict:" + the detail line
                head += " " + lines[i + 1].strip()
            return head[:1000]
    return (lines[-1] if lines else "unknown error")[:1000]


# -- public API ---------------------------------------------------------------------------------------
def default_token_file(settings: Any = None) -> Path:
    """Where the local token lives: ``settings.serve_token_file`` or ``$AIMASS_HOME/serve-token``."""
    if settings is None:
        from aimass.settings import Settings

        settings = Settings.load()
    return Path(settings.serve_token_file or Path(settings.home) / "serve-token").expanduser()


def _serve_http(host: str, port: int) -> dict[str, Any]:
    """Start Serve's proxy (if it is not running) and return the HTTP options in force."""
    from ray import serve
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # noqa: BLE001
        client = None
    if client is None:
        serve.start(http_options={"host": host, "port": port}, logging_config=_LOGGING)
        client = _get_global_client()
    http = client.get_serve_details().get("http_options") or {}
    return {"host": http.get("host", host), "port": int(http.get("port", port))}


def serve_url(http: dict[str, Any], route_prefix: str = "/") -> str:
    host = http.get("host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{http.get('port', 8000)}{route_prefix.rstrip('/')}"


def direct_urls(app: str, http: dict[str, Any], route_prefix: str = "/") -> list[str]:
    """URLs of the application's ingress replicas themselves, when Serve runs with direct ingress
    (``RAY_SERVE_THROUGHPUT_OPTIMIZED``, on for clusters AI Mass starts): the fastest way in, one hop
    less than the proxy's URL. A URL changes when its replica is replaced, so clients keep the proxy's
    URL to fall back on. Empty without direct ingress or while no ingress replica is running."""
    import ray
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return []
        groups = ray.get(client._controller.get_target_groups.remote(app), timeout=10)
    except Exception:  # noqa: BLE001 - an older Serve or a controller restarting: the proxy URL still works
        return []
    local = is_loopback(http.get("host"))  # replicas listen where the proxy does: loopback, or every interface
    urls = []
    for g in groups:
        if not str(g.protocol).upper().endswith("HTTP") or (g.app_name and g.app_name != app):
            continue
        for t in g.targets:
            if t.port == http.get("port"):
                continue  # the proxy itself
            urls.append(serve_url({"host": "127.0.0.1" if local else t.ip, "port": t.port}, route_prefix))
    return sorted(set(urls))


def with_model(app: str, model: dict[str, Any], app_fields: dict[str, Any] | None = None) -> ServeConfig:
    """The config of application ``app`` as deployed now, with ``model`` (a ``models[]`` entry) added or replaced.

    Other models of the application are kept, so serving one more model never takes another one down.
    """
    from aimass.serving.controller import load_state

    doc = dict((load_state(app) or {}).get("config") or {"name": app, "models": []})
    doc.update(app_fields or {})
    doc["name"] = app
    doc["models"] = [m for m in doc.get("models", []) if m.get("name") != model["name"]] + [model]
    mx = doc.get("multiplex")
    if mx:
        mx = dict(mx, models=[m for m in mx.get("models", []) if m.get("name") != model["name"]])
        doc["multiplex"] = mx if mx["models"] else None
    return ServeConfig.model_validate({k: v for k, v in doc.items() if v is not None})


def deploy(cfg: ServeConfig | dict, settings: Any = None, *, http_host: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """Deploy or update the application described by ``cfg``; returns its status once it serves.

    Args:
        cfg: the serving config.
        settings: :class:`aimass.settings.Settings` (for the HTTP port, the token file, the tracking URI).
        http_host: where Serve's proxy listens when this call starts it (default 127.0.0.1; the
            ``AIMASS_SERVE_HOST`` environment variable changes the default).
        timeout_s: overall limit (default: the config's ``rolloutTimeoutS`` plus a margin).

    Raises:
        ServingError: the rollout failed (the previous version keeps serving) or auth is misconfigured.
    """
    import ray

    from aimass.serving.controller import NAMESPACE, RolloutController, controller_name

    if settings is None:
        from aimass.settings import Settings

        settings = Settings.load()
    cfg = cfg if isinstance(cfg, ServeConfig) else ServeConfig.model_validate(cfg)
    if not ray.is_initialized():
        raise ServingError("Ray is not connected", fix="Call aimass.orchestrator.ray_runtime.ensure_ray() first.")
    http = _serve_http(http_host or DEFAULT_HTTP_HOST, settings.serve_http_port)
    updates: dict[str, Any] = {}
    if cfg.auth.mode == "none":
        if not is_loopback(http["host"]):
            raise ServingError(f"auth.mode none (local mode) is refused: Serve listens on {http['host']}, not on loopback",
                               fix="Use auth.mode token (the default), or serve on 127.0.0.1.")
    elif not cfg.auth.token_file and not os.environ.get(ENV_TOKEN_FILE) and not os.environ.get(ENV_TOKEN):
        updates["auth"] = cfg.auth.model_copy(update={"token_file": str(ensure_token_file(default_token_file(settings)))})
    if cfg.tracking_uri is None:
        from urllib.parse import urlsplit

        if "://" not in settings.tracking_uri or not urlsplit(settings.tracking_uri).password:
            updates["tracking_uri"] = settings.tracking_uri
            updates["registry_uri"] = settings.registry_uri
    if updates:
        cfg = ServeConfig.model_validate({**cfg.model_dump(), **{k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in updates.items()}})
    ctl = ray.remote(RolloutController).options(name=controller_name(cfg.name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                                    num_cpus=0, max_concurrency=8, max_restarts=-1).remote(cfg.name)
    ray.get(ctl.set_http.remote(http))
    limit = timeout_s if timeout_s is not None else cfg.rollout_timeout_s * 3 + 60
    try:
        ray.get(ctl.apply.remote(cfg.dump()), timeout=limit)
    except ray.exceptions.GetTimeoutError:
        raise ServingError(f"deploying {cfg.name} did not finish within {limit:g}s", retryable=True) from None
    except Exception as e:  # noqa: BLE001 - a RayTaskError wrapping the controller's error
        cause = getattr(e, "cause", None) or e
        if isinstance(cause, AimassError):
            cls = next(c for c in type(cause).__mro__ if c.__module__.startswith("aimass") and issubclass(c, AimassError))
            raise cls(cause.message, got=cause.got, fix=cause.fix, location=cause.location) from None
        raise ServingError(f"deploying {cfg.name} failed: {cause}") from None
    return _app_status(cfg.name, http)


def _app_status(app: str, http: dict[str, Any] | None = None) -> dict[str, Any]:
    from ray import serve

    from aimass.serving.controller import load_state

    state = load_state(app) or {}
    http = http or state.get("http") or {}
    cfg_doc = state.get("config") or {}
    plan = state.get("plan") or {}
    st = serve.status().applications.get(app)
    deployments = {}
    if st is not None:
        for n, d in st.deployments.items():
            counts = dict(getattr(d, "replica_states", {}) or {})
            deployments[n] = {"status": str(d.status).rsplit(".", 1)[-1], "replicas": {str(k).rsplit(".", 1)[-1]: v for k, v in counts.items()},
                              "message": d.message or ""}
    models = []
    for name, e in (plan.get("models") or {}).items():
        ch = e.get("challenger") or {}
        share = next((m.get("canary", {}) or {} for m in cfg_doc.get("models", []) if m.get("name") == name), {}).get("trafficShare")
        models.append({"name": name, "registered": e["registered"], "version": e["champion"]["version"],
                       "challenger": ch.get("version"), "canary_share": share if ch else None, "kind": "dedicated"})
    for name, m in ((plan.get("multiplex") or {}).get("models") or {}).items():
        models.append({"name": name, "registered": m["registered"], "version": m["version"], "challenger": None,
                       "canary_share": None, "kind": "multiplexed"})
    auth = (cfg_doc.get("auth") or {})
    return {
        "name": app,
        "status": str(st.status).rsplit(".", 1)[-1] if st is not None else "NOT_RUNNING",
        "url": serve_url(http, cfg_doc.get("routePrefix", "/")) if http else None,
        "direct_urls": direct_urls(app, http, cfg_doc.get("routePrefix", "/")) if http and st is not None else [],
        "auth": auth.get("mode", "token"),
        "token_file": auth.get("tokenFile"),
        "models": models,
        "deployments": deployments,
        "events": (state.get("events") or [])[-20:],
    }


def status(name: str | None = None) -> dict[str, Any]:
    """Status of one application (``name``) or of all: models, versions, canaries, deployments, events."""
    import ray

    from aimass.serving.controller import list_states

    if not ray.is_initialized():
        raise ServingError("Ray is not connected", fix="Call aimass.orchestrator.ray_runtime.ensure_ray() first.")
    from ray import serve

    names = [name] if name else sorted(set(list_states()) | set(serve.status().applications))
    return {"apps": [_app_status(n) for n in names]}


def shutdown(name: str) -> bool:
    """Remove an application, its rollout controller and its state. Returns False if there was none."""
    import ray

    from aimass.serving.controller import NAMESPACE, controller_name, delete_state, load_state

    existed = _app_exists(name) or load_state(name) is not None
    try:
        ctl = ray.get_actor(controller_name(name), namespace=NAMESPACE)
        try:
            ray.get(ctl.stop.remote(), timeout=10)
        except Exception:  # noqa: BLE001
            pass
        ray.kill(ctl, no_restart=True)
        existed = True
    except ValueError:
        pass
    _delete_app(name)
    delete_state(name)
    return existed
