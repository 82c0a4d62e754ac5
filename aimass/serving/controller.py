"""Safe updates: the rollout controller of one serving application.

A detached Ray actor (``aimass-serve-<app>`` in namespace ``aimass``), the single writer of an
application's state (kept in Ray's GCS key-value store, so it survives the actor). Every change goes
through three phases, each a ``serve.run`` of a complete graph (see :mod:`aimass.serving.deploy`):

1. **stage** — new model versions start *next to* the old ones; traffic is unchanged. A version goes on
   only once its replicas constructed (download, strict load, warm-up) and a readiness probe through
   the serving path answered. If not, the staged deployments are removed again and the rollout fails
   with the replica's error: the previous version never stopped serving.
2. **switch** — the ingress is reconfigured in place to route to the new plan (champion, challenger
   and its traffic share). No replica restarts.
3. **retire** — deployments no longer in the plan are removed; Serve drains their in-flight requests.

A canary whose error rate or p99 crosses its threshold is stopped by the ingress at once and
reported here: the controller makes the rollback permanent (switch + retire), tags the model version
``aimass.rollback`` in MLflow and logs it. With ``watchAlias``, a thread re-resolves aliases every
``aliasPollIntervalS`` and rolls out whatever an alias move changed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from aimass.exceptions import AimassError, NotFoundError, ServingError
from aimass.serving.config import ServeConfig, parse_model_uri

__all__ = ["NAMESPACE", "RolloutController", "controller_name", "load_state", "notify_rollback", "record_rollback",
           "resolve_plan", "ROLLBACK_TAG"]

log = logging.getLogger("aimass.serving")

NAMESPACE = "aimass"
ROLLBACK_TAG = "aimass.rollback"
_KV_NS = "aimass"
_MAX_EVENTS = 200


def controller_name(app: str) -> str:
    return f"aimass-serve-{app}"


def _kv_key(app: str) -> bytes:
    return f"serve/{app}/state".encode()


def load_state(app: str) -> dict[str, Any] | None:
    """The persisted state of an application (config, plan, events), or None."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_kv_key(app), namespace=_KV_NS)
    return json.loads(raw) if raw else None


def _save_state(app: str, state: dict[str, Any]) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_kv_key(app), json.dumps(state, default=str).encode(), overwrite=True, namespace=_KV_NS)


def delete_state(app: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(_kv_key(app), namespace=_KV_NS)


def list_states() -> list[str]:
    from ray.experimental.internal_kv import _internal_kv_list

    keys = _internal_kv_list(b"serve/", namespace=_KV_NS) or []
    return sorted({k.decode().split("/")[1] for k in keys if k.decode().endswith("/state")})


def _tracker(cfg: ServeConfig | None, tracking_uri: str | None = None, registry_uri: str | None = None):
    from aimass.tracking import Tracker

    uri = tracking_uri or (cfg.tracking_uri if cfg else None)
    reg = registry_uri or (cfg.registry_uri if cfg else None)
    if uri is None:
        from aimass.settings import Settings

        s = Settings.load()
        uri, reg = s.tracking_uri, reg or s.registry_uri
    return Tracker(uri, reg, retry_for_s=30.0)


def _resolve(tracker: Any, uri: str) -> tuple[str, str]:
    name, version, alias = parse_model_uri(uri)
    if alias is not None:
        mv = tracker.version_by_alias(name, alias)
        if mv is None:
            raise NotFoundError(f"no version of model {name!r} has alias {alias!r}", got=uri,
                                fix="Register a version and set the alias (a register step does), or serve models:/NAME/VERSION.")
        return name, str(mv["version"])
    versions = {v["version"] for v in tracker.model_versions(name)}
    if str(version) not in versions:
        raise NotFoundError(f"model {name!r} has no version {version}", got=uri,
                            fix=f"Registered versions: {', '.join(sorted(versions, key=int)) or 'none'}.")
    return name, str(version)


def model_deployment(served: str, registered: str, version: str) -> str:
    from aimass.serving.app import model_deployment_name

    return model_deployment_name(served if registered == served else f"{served}--{registered}", version)


def resolve_plan(cfg: ServeConfig, rolled_back: dict[str, list[str]], tracker: Any = None) -> dict[str, Any]:
    """Resolve every model reference to a registered version: the routing plan of the ingress.

    A challenger version that was rolled back (``rolled_back[registered]``) is not staged again until
    its alias points at another version.
    """
    from aimass.serving.app import multiplex_deployment_name

    tracker = tracker or _tracker(cfg)
    models: dict[str, Any] = {}
    for m in cfg.models:
        reg, ver = _resolve(tracker, m.model_uri)
        entry: dict[str, Any] = {"registered": reg, "champion": {"version": ver, "deployment": model_deployment(m.name, reg, ver)},
                                 "challenger": None}
        if m.canary is not None:
            creg, cver = _resolve(tracker, m.canary.model_uri)
            if (creg, cver) != (reg, ver) and cver not in rolled_back.get(creg, []):
                entry["challenger"] = {"version": cver, "registered": creg, "deployment": model_deployment(m.name, creg, cver)}
        models[m.name] = entry
    multiplex = None
    if cfg.multiplex is not None:
        mm = {}
        for m in cfg.multiplex.models:
            reg, ver = _resolve(tracker, m.model_uri)
            mm[m.name] = {"registered": reg, "version": ver}
        multiplex = {"deployment": multiplex_deployment_name(mm), "models": mm}
    return {"models": models, "multiplex": multiplex}


def record_rollback(tracker: Any, info: dict[str, Any]) -> None:
    """Tag the rolled-back model version in MLflow and log the event."""
    payload = json.dumps({k: info.get(k) for k in ("reason", "error_rate", "p99_ms", "requests", "champion_version", "app", "at", "model")})
    tracker.set_model_version_tag(info["registered"], str(info["version"]), ROLLBACK_TAG, payload)
    log.warning("canary rolled back: model %s v%s (%s) in app %s: %s", info["registered"], info["version"], info.get("model"),
                info.get("app"), info.get("reason"))


def notify_rollback(app: str, info: dict[str, Any], tracking_uri: str | None, registry_uri: str | None) -> None:
    """From an ingress replica: hand the rollback to the controller, or record it here if there is none."""
    import ray

    try:
        ctl = ray.get_actor(controller_name(app), namespace=NAMESPACE)
    except ValueError:
        ctl = None
    if ctl is not None:
        ctl.rollback.remote(info)  # fire and forget: the controller records it and makes it permanent
        return
    record_rollback(_tracker(None, tracking_uri, registry_uri), info)


class RolloutController:
    """The rollout state machine of one application (run as a detached, threaded Ray actor)."""

    def __init__(self, app: str) -> None:
        self.app = app
        self._lock = threading.RLock()
        state = load_state(app) or {}
        self.cfg_doc: dict[str, Any] | None = state.get("config")
        self.plan: dict[str, Any] | None = state.get("plan")
        self.events: list[dict[str, Any]] = state.get("events", [])
        self.rolled_back: dict[str, list[str]] = state.get("rolled_back", {})
        self.http: dict[str, Any] = state.get("http", {})
        self._failed_target: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="alias-watch", daemon=True)
        self._watcher.start()

    # -- state ------------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> None:
        ev = {"at": time.time(), "event": kind, **fields}
        self.events = (self.events + [ev])[-_MAX_EVENTS:]
        log.info("serving %s: %s %s", self.app, kind, fields)
        self._persist()

    def _persist(self) -> None:
        _save_state(self.app, {"config": self.cfg_doc, "plan": self.plan, "events": self.events,
                               "rolled_back": self.rolled_back, "http": self.http, "updated": time.time()})

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"app": self.app, "config": self.cfg_doc, "plan": self.plan, "events": self.events[-50:],
                    "rolled_back": self.rolled_back}

    def ping(self) -> bool:
        return True

    def set_http(self, http: dict[str, Any]) -> None:
        self.http = http

    # -- rollout ----------------------------------------------------------------------------------
    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        cfg = ServeConfig.model_validate(doc)
        with self._lock:
            if self.cfg_doc is not None and cfg.dump() != self.cfg_doc:
                # a new config: the same challenger versions may be tried again deliberately
                self.rolled_back = {}
            self._apply(cfg, reason="deploy")
            return self.status()

    def _apply(self, cfg: ServeConfig, reason: str) -> None:
        from aimass.serving.app import deployment_specs
        from aimass.serving.deploy import _app_exists, _run_graph

        deadline = time.monotonic() + cfg.rollout_timeout_s
        new_plan = resolve_plan(cfg, self.rolled_back)
        new_deps = deployment_specs(cfg, new_plan)
        old_cfg = ServeConfig.model_validate(self.cfg_doc) if self.cfg_doc else None
        if old_cfg is None or self.plan is None or not _app_exists(self.app):
            try:
                _run_graph(self.app, cfg, new_plan, new_deps, deadline, probe=list(new_deps))
            except Exception as e:
                from aimass.serving.deploy import _delete_app

                _delete_app(self.app)
                self._event("rollout_failed", reason=reason, plan=_brief(new_plan), error=str(e))
                raise _failure(e, "deployment failed", None) from None
            self.cfg_doc, self.plan = cfg.dump(), new_plan
            self._event("deployed", reason=reason, plan=_brief(new_plan))
            return
        old_plan = self.plan
        old_deps = deployment_specs(old_cfg, old_plan)
        changed = [n for n, d in new_deps.items() if n not in old_deps or old_deps[n].version != d.version]
        staged = {**old_deps, **new_deps}
        if changed:  # 1. stage: the new versions start next to the old ones; traffic unchanged
            try:
                _run_graph(self.app, old_cfg, old_plan, staged, deadline, probe=changed)
            except Exception as e:
                try:
                    _run_graph(self.app, old_cfg, old_plan, old_deps, time.monotonic() + 120, probe=[])
                except Exception:  # noqa: BLE001 - reported below; the old graph was never touched
                    log.exception("restoring %s after a failed rollout", self.app)
                self._event("rollout_failed", reason=reason, plan=_brief(new_plan), kept=_brief(old_plan), error=str(e))
                raise _failure(e, "rollout failed", old_plan) from None
        if cfg.dump() != self.cfg_doc or new_plan != old_plan:  # 2. switch traffic
            _run_graph(self.app, cfg, new_plan, staged, deadline, probe=[])
        if set(staged) != set(new_deps):  # 3. retire what the plan no longer uses
            _run_graph(self.app, cfg, new_plan, new_deps, deadline, probe=[])
        self.cfg_doc, self.plan = cfg.dump(), new_plan
        if changed or new_plan != old_plan:
            self._event("rolled_out", reason=reason, plan=_brief(new_plan), previous=_brief(old_plan), started=changed)

    def rollback(self, info: dict[str, Any]) -> dict[str, Any]:
        """Called by an ingress whose canary breached: stop the challenger for good and record it."""
        with self._lock:
            reg, ver, model = info["registered"], str(info["version"]), info["model"]
            if ver in self.rolled_back.get(reg, []):
                return self.status()
            self.rolled_back.setdefault(reg, []).append(ver)
            try:
                record_rollback(_tracker(ServeConfig.model_validate(self.cfg_doc) if self.cfg_doc else None), info)
            except AimassError as e:
                log.error("could not tag the rollback in MLflow: %s", e)
            self._event("canary_rolled_back", model=model, registered=reg, version=ver, reason=info.get("reason"),
                        error_rate=info.get("error_rate"), p99_ms=info.get("p99_ms"))
            entry = (self.plan or {}).get("models", {}).get(model)
            if self.cfg_doc and entry and entry.get("challenger") and entry["challenger"]["version"] == ver:
                cfg = ServeConfig.model_validate(self.cfg_doc)
                try:
                    self._apply(cfg, reason="canary rollback")
                except Exception as e:  # noqa: BLE001 - traffic is already off the challenger in the ingress
                    self._event("rollback_cleanup_failed", model=model, version=ver, error=str(e))
            return self.status()

    def _watch(self) -> None:
        while not self._stop.is_set():
            interval = 30.0
            try:
                with self._lock:
                    cfg = ServeConfig.model_validate(self.cfg_doc) if self.cfg_doc else None
                if cfg is not None:
                    interval = cfg.alias_poll_interval_s
                    if any(m.watch_alias for m in cfg.models):
                        with self._lock:
                            plan = resolve_plan(cfg, self.rolled_back)
                            target = _watched(cfg, plan)
                            # a target that failed is not retried every poll: only when an alias moves again
                            if self.plan is not None and target != _watched(cfg, self.plan) and target != self._failed_target:
                                try:
                                    self._apply(cfg, reason="alias moved")
                                    self._failed_target = None
                                except Exception:
                                    self._failed_target = target
                                    raise
            except Exception as e:  # noqa: BLE001 - keep watching; the failure is in the events
                try:
                    with self._lock:
                        self._event("alias_rollout_failed", error=str(e))
                except Exception:  # noqa: BLE001
                    log.exception("alias watch")
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()


def _watched(cfg: ServeConfig, plan: dict[str, Any]) -> dict[str, Any]:
    return {m.name: plan["models"].get(m.name) for m in cfg.models if m.watch_alias}


def _brief(plan: dict[str, Any] | None) -> dict[str, Any]:
    if not plan:
        return {}
    out: dict[str, Any] = {}
    for name, e in plan.get("models", {}).items():
        out[name] = {"champion": e["champion"]["version"], "challenger": (e.get("challenger") or {}).get("version")}
    if plan.get("multiplex"):
        out["multiplexed"] = {n: m["version"] for n, m in plan["multiplex"]["models"].items()}
    return out


def _failure(e: Exception, what: str, kept: dict[str, Any] | None) -> ServingError:
    keep = ""
    if kept:
        keep = "; still serving " + ", ".join(f"{n} v{v['champion']}" for n, v in _brief(kept).items() if isinstance(v, dict) and "champion" in v)
    msg = str(e.message if isinstance(e, AimassError) else e)
    return ServingError(f"{what}: {msg}{keep}", fix="Fix the model version (see `aimass serving status` for the replica error) and deploy again.")

