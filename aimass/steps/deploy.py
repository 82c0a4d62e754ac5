"""The ``deploy`` step: serve the registered model on Ray Serve and wait until it answers."""

from __future__ import annotations

from typing import Any

from aimass.exceptions import SpecError
from aimass.steps.base import Step, StepContext

__all__ = ["DeployStep"]


class DeployStep(Step):
    """Adds the model to a Serve application (see :class:`aimass.spec.configs.deploy.DeployConfig`).

    Runs inside a Ray task on the pipeline's cluster; the rollout itself is done by the application's
    rollout controller, so a failed rollout leaves the previous version serving and fails this step.
    """

    type_name = "deploy"
    cacheable = False  # a deployment is state outside the store: always (idempotently) redeploy
    code_modules = ("aimass.serving.config", "aimass.serving.deploy", "aimass.serving.controller")

    def run(self, ctx: StepContext, config) -> dict[str, Any]:
        from urllib.parse import urlsplit

        from aimass.serving.deploy import deploy, with_model
        from aimass.settings import Settings

        uri = config.model_uri or ctx.inputs.get("model_uri")
        if not uri:
            raise SpecError("the deploy step has no model to serve", location=f"steps.{ctx.step_name}",
                            fix="Wire it after a register step (input model_uri) or set config.modelUri: models:/NAME@ALIAS.")
        spec = config.model_spec(uri)
        cfg = with_model(config.app_name, spec, config.app_fields())
        updates: dict[str, Any] = {}
        if ctx.tracking_uri and not ("://" in ctx.tracking_uri and urlsplit(ctx.tracking_uri).password):
            updates = {"tracking_uri": ctx.tracking_uri, "registry_uri": ctx.registry_uri}
        if updates:
            cfg = cfg.model_copy(update=updates)
        st = deploy(cfg, Settings.load())
        served = next(m for m in st["models"] if m["name"] == spec["name"])
        url = st["url"]
        endpoint = {"url": url, "infer_url": f"{url}/v2/models/{served['name']}/infer", "app": st["name"], "model": served["name"],
                    "registered": served["registered"], "version": served["version"], "challenger": served.get("challenger")}
        ctx.set_tags({"aimass.endpoint": url, "aimass.served_model": served["name"], "aimass.served_version": served["version"]})
        return {"endpoint": endpoint}

    def ray_options(self, config: Any, resources: dict[str, Any]) -> dict[str, Any]:
        # the step only waits for the rollout controller: it needs no CPU of its own
        opts = super().ray_options(config, {"cpu": resources.get("cpu", 0), **{k: v for k, v in resources.items() if k != "cpu"}})
        return opts
