"""Config of the ``deploy`` step: put a registered model on Ray Serve (Open Inference Protocol v2).

Pure pydantic (no Ray): the pieces come from :mod:`aimass.serving.config`, the one serving schema, so
a pipeline's deploy step and ``aimass serve --config`` mean the same thing.

Example (pipeline YAML)::

    - name: deploy
      type: deploy
      config:
        modelName: digits                 # served as /v2/models/digits
        autoscaling: {minReplicas: 1, maxReplicas: 4}
        batching: {maxBatchSize: 64, batchWaitTimeoutS: 0.004}
        canary: {trafficShare: 0.1, maxErrorRate: 0.02}   # the new version is a canary next to the champion
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from aimass.serving.config import (
    MODEL_NAME,
    AuthSpec,
    AutoscalingSpec,
    BatchingSpec,
    CanaryPolicy,
    DeploymentSpec,
    check_colocate,
    parse_model_uri,
)
from aimass.spec.base import DNS_LABEL
from aimass.spec.configs.base import StepConfig

__all__ = ["DeployConfig"]


class DeployConfig(StepConfig):
    """Serves the model from the upstream ``register`` step (its ``model_uri``) or ``modelUri``.

    The model is added to (or updated in) the Serve application ``appName``; other models of that
    application keep serving. A new version goes live only once it is ready; with ``canary``, the new
    version is a challenger that gets ``trafficShare`` of the requests next to ``championUri`` and is
    rolled back automatically when its error rate or p99 latency crosses the thresholds.
    Produces ``endpoint``: ``{url, infer_url, app, model, version, challenger}``.
    """

    INPUTS = {"model_uri": False}
    OUTPUTS = ("endpoint",)

    model_uri: str | None = Field(None, description="What to serve; overrides the input. E.g. models:/digits@champion to serve only what passed the gate.")
    model_name: str | None = Field(None, pattern=MODEL_NAME, description="Served name (/v2/models/{name}); defaults to the registered name.")
    app_name: str = Field("aimass", pattern=DNS_LABEL, max_length=63, description="Serve application to add the model to.")
    route_prefix: str = Field("/", pattern=r"^/[A-Za-z0-9/_-]*$", description="HTTP path prefix of the application.")
    replicas: int | None = Field(None, ge=1, le=1000, description="Fixed replica count (1 when neither this nor autoscaling is set).")
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscale between min and max replicas.")
    num_cpus: float = Field(0.0, ge=0, le=512, description="CPU cores reserved per replica (0: none, so serving never blocks training on a small cluster).")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per replica.")
    max_ongoing_requests: int = Field(32, ge=1, le=100_000, description="Requests one replica works on at once.")
    max_queued_requests: int = Field(256, ge=1, le=1_000_000, description="Bounded queue per caller; beyond it requests get 503 at once.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Dynamic batching.")
    canary: CanaryPolicy | None = Field(None, description="Serve the new version as a canary next to championUri instead of replacing it.")
    champion_uri: str | None = Field(None, description="The champion a canary runs against (default models:/<registered name>@champion).")
    watch_alias: bool = Field(False, description="Roll out automatically when the served alias moves in the registry.")
    colocate: bool = Field(False, description="Also answer the champion from a copy in each ingress replica (no hop to the model "
                           "deployment; CPU models only). See docs/serving.md#throughput.")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="Bearer-token auth (token from a file or the environment, never here).")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="Largest request body (413 beyond).")
    max_rows_per_request: int = Field(4096, ge=1, le=1_000_000, description="Most rows per request.")
    rollout_timeout_s: float = Field(600.0, gt=0, le=86_400, description="Longest a new version may take to become ready.")

    @field_validator("model_uri", "champion_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None:
            parse_model_uri(v)
        return v

    @model_validator(mode="after")
    def _one_of(self) -> "DeployConfig":
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set either replicas (fixed) or autoscaling, not both")
        check_colocate(self.colocate, self.num_gpus, "numGpus")
        return self

    def model_spec(self, model_uri: str) -> dict[str, Any]:
        """The ``models[]`` entry (camelCase, as in a ServeConfig) that serves ``model_uri``."""
        registered, _, _ = parse_model_uri(model_uri)
        dep = DeploymentSpec(replicas=self.replicas, autoscaling=self.autoscaling, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                             max_ongoing_requests=self.max_ongoing_requests, max_queued_requests=self.max_queued_requests)
        spec: dict[str, Any] = {
            "name": self.model_name or registered,
            "modelUri": model_uri,
            "deployment": dep.dump(),
            "batching": self.batching.dump(),
            "watchAlias": self.watch_alias,
            "colocate": self.colocate,
            "maxRowsPerRequest": self.max_rows_per_request,
        }
        if self.canary is not None:
            spec["modelUri"] = self.champion_uri or f"models:/{registered}@champion"
            spec["canary"] = {**self.canary.dump(), "modelUri": model_uri}
        return spec

    def app_fields(self) -> dict[str, Any]:
        """Application-level ServeConfig fields set by this step."""
        return {"name": self.app_name, "routePrefix": self.route_prefix, "auth": self.auth.dump(),
                "maxRequestBytes": self.max_request_bytes, "rolloutTimeoutS": self.rollout_timeout_s}
