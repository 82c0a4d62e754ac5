"""Build the Serve application of a :class:`~aimass.serving.config.ServeConfig`.

Graph: one ``Ingress`` deployment (HTTP, V2 protocol, auth, validation, routing, canary, metrics)
plus one ``ModelServer`` deployment per served model *version* (named ``<model>--<version>``) and,
when configured, one ``multiplexed`` deployment. Which version takes the traffic is the ingress's
``user_config`` (the *plan*): switching versions, starting or ending a canary reconfigures the
ingress in place, without restarting anything.

Two entry points:

* :func:`app_builder` — ``import_path`` of the Serve config (RayService ``serveConfigV2``, ``serve
  deploy``): resolves aliases once, at build time, and returns the whole application.
* :func:`build_application` — used by the rollout controller (:mod:`aimass.serving.controller`),
  which deploys successive graphs so a new version is live only once it is ready.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from aimass.serving.config import ServeConfig

__all__ = ["app_builder", "build_application", "deployment_specs", "DepSpec", "INGRESS_NAME", "MULTIPLEX_NAME",
           "model_deployment_name", "multiplex_deployment_name", "code_version"]

INGRESS_NAME = "Ingress"
MULTIPLEX_NAME = "multiplexed"


def model_deployment_name(model: str, version: str) -> str:
    return f"{model}--{version}"


def multiplex_deployment_name(models: dict[str, Any]) -> str:
    """``multiplexed--<digest of the served versions>``: a new set of versions is a new deployment, staged
    and probed beside the old one before traffic moves (as a new version of a dedicated model is)."""
    return f"{MULTIPLEX_NAME}--{_digest(sorted((n, m['registered'], str(m['version'])) for n, m in models.items()))[:10]}"


_CODE_VERSION: str | None = None


def code_version() -> str:
    """Hash of the serving code: replicas restart when it changes, and only then."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        h = hashlib.sha256()
        here = Path(__file__).parent
        for p in sorted(here.glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        for mod in ("models/io.py", "models/registry.py", "models/zoo.py"):
            p = here.parent / mod
            if p.exists():
                h.update(p.read_bytes())
        _CODE_VERSION = h.hexdigest()[:16]
    return _CODE_VERSION


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


_SCALING_OPTIONS = ("num_replicas", "autoscaling_config")


@dataclass
class DepSpec:
    """Everything Serve needs for one model deployment."""

    name: str
    kind: str  # "model" | "multiplex"
    init: dict[str, Any]
    options: dict[str, Any]
    user_config: dict[str, Any]

    @property
    def version(self) -> str:
        # Left out, because Serve applies them to running replicas: user_config (batching, by reconfigure)
        # and the replica count or autoscaling policy (by adding or removing replicas). A new version
        # would restart every replica just to scale.
        options = {k: v for k, v in self.options.items() if k not in _SCALING_OPTIONS}
        return _digest(code_version(), self.kind, self.init, options)


def deployment_specs(cfg: ServeConfig, plan: dict[str, Any]) -> dict[str, DepSpec]:
    """The model deployments a plan needs: champion and challenger of each model, and the multiplexed one."""
    out: dict[str, DepSpec] = {}
    common = {"trackingUri": cfg.tracking_uri, "registryUri": cfg.registry_uri}
    for m in cfg.models:
        entry = plan["models"].get(m.name)
        if entry is None:
            continue
        device = "cuda" if m.deployment.num_gpus > 0 else "cpu"
        for role in ("champion", "challenger"):
            t = entry.get(role)
            if not t:
                continue
            init = {"model": m.name, "registered": entry["registered"] if role == "champion" else t.get("registered", entry["registered"]),
                    "version": t["version"], "device": device, "numCpus": m.deployment.num_cpus, **common}
            out[t["deployment"]] = DepSpec(t["deployment"], "model", init, m.deployment.serve_options(),
                                           {"batching": m.batching.dump()})
    mx = plan.get("multiplex")
    if cfg.multiplex and mx:
        spec = cfg.multiplex
        init = {"models": mx["models"], "cacheSize": spec.max_models_per_replica, "numCpus": spec.deployment.num_cpus,
                "device": "cuda" if spec.deployment.num_gpus > 0 else "cpu", **common}
        out[mx["deployment"]] = DepSpec(mx["deployment"], "multiplex", init, spec.deployment.serve_options(),
                                        {"batching": spec.batching.dump()})
    return out


def _ingress_options(cfg: ServeConfig) -> dict[str, Any]:
    ing = cfg.ingress
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": ing.num_cpus},
        "max_ongoing_requests": ing.max_ongoing_requests,
        "max_queued_requests": ing.max_queued_requests,
        "backpressure_config": {"status_code": ing.overload_status, "retry_after_s": 1.0},
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 10.0,
        "graceful_shutdown_timeout_s": 10.0,
        "max_surge_percent": 100,  # a restarted ingress keeps serving until its replacement is ready
    }
    if ing.autoscaling is not None:
        opts["autoscaling_config"] = ing.autoscaling.to_serve()
    else:
        opts["num_replicas"] = ing.replicas or 1
    return opts


def build_application(cfg: ServeConfig, plan: dict[str, Any], deployments: dict[str, DepSpec] | None = None) -> Application:
    """The Serve application: the ingress routing by ``plan`` plus ``deployments`` (default: the plan's own).

    Deployment versions are pinned to a hash of what they run, so redeploying the same graph, or one
    with deployments added or removed, restarts nothing that did not change.
    """
    from aimass.serving.ingress import Ingress
    from aimass.serving.model import ModelServer, MultiModelServer

    deps = deployment_specs(cfg, plan) if deployments is None else deployments
    bound = []
    for name in sorted(deps):
        d = deps[name]
        cls = ModelServer if d.kind == "model" else MultiModelServer
        dep = serve.deployment(cls).options(name=name, user_config=d.user_config, max_surge_percent=100, **d.options)
        dep = dep.options(version=d.version, _internal=True)
        bound.append(dep.bind(d.init))
    ing = serve.deployment(Ingress).options(name=INGRESS_NAME, user_config={"config": cfg.dump(), "plan": plan},
                                            **_ingress_options(cfg))
    ing = ing.options(version=_digest(code_version(), "ingress", _ingress_options(cfg)), _internal=True)
    return ing.bind(*bound)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's ``import_path`` entry (``aimass.serving.app:app_builder``): ``args`` is a ServeConfig document.

    Aliases are resolved now, against the registry the replicas use; a canary in the config starts
    right away. Automatic rollback then stops the challenger's traffic in every ingress replica and
    records the event on the model version (``aimass.rollback`` tag); redeploy to make it permanent.
    """
    from aimass.serving.controller import resolve_plan

    cfg = ServeConfig.model_validate(args or {})
    plan = resolve_plan(cfg, rolled_back={})
    return build_application(cfg, plan)
