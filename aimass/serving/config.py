"""The serving config document: what ``aimass serve --config``, the ``deploy`` step and the Helm chart share.

Pure pydantic: importing this module pulls in no Ray, torch or mlflow, so pipeline specs that embed
pieces of it validate anywhere.

One :class:`ServeConfig` describes one Ray Serve *application*: an ingress speaking the Open Inference
Protocol (KServe V2) over REST, one deployment per served model version (dedicated models, with
dynamic batching, autoscaling and an optional canary) and optionally one multiplexed deployment that
holds several registered models behind an LRU cache.

The same document is used in three places:

* ``aimass serve --config FILE`` and :func:`aimass.serving.deploy.deploy` (local or any Ray cluster);
* the ``deploy`` pipeline step (:class:`aimass.spec.configs.deploy.DeployConfig` builds one);
* the Helm chart's RayService: ``serveConfigV2`` holds :func:`to_serve_config_v2` of it, an application
  whose ``import_path`` is ``aimass.serving.app:app_builder`` and whose ``args`` is this document verbatim.

Example (YAML, camelCase keys)::

    name: aimass
    models:
      - name: digits
        modelUri: models:/digits@champion
        autoscaling: {minReplicas: 1, maxReplicas: 4, targetOngoingRequests: 4}
        batching: {maxBatchSize: 64, batchWaitTimeoutS: 0.004}
        canary:
          modelUri: models:/digits@challenger
          trafficShare: 0.1
          maxErrorRate: 0.02
          maxP99LatencyMs: 150
    auth: {tokenFile: /var/run/secrets/aimass/serve-token}

Secrets never appear here: the bearer token is read by the replicas from ``auth.tokenFile`` or from
the environment (``AIMASS_SERVE_TOKEN_FILE``, ``AIMASS_SERVE_TOKEN``).
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from aimass.spec.base import DNS_LABEL, StrictModel

__all__ = [
    "APP_IMPORT_PATH",
    "MODEL_NAME",
    "MODEL_URI",
    "AutoscalingSpec",
    "BatchingSpec",
    "CanaryPolicy",
    "CanarySpec",
    "DeploymentSpec",
    "ModelSpec",
    "MultiplexedModel",
    "MultiplexSpec",
    "AuthSpec",
    "IngressSpec",
    "ServeConfig",
    "parse_model_uri",
    "to_serve_config_v2",
]

#: ``import_path`` of the Serve application built from a :class:`ServeConfig` (fixed: the Helm chart uses it).
APP_IMPORT_PATH = "aimass.serving.app:app_builder"

#: A registered model name (MLflow) or a served model name (the ``{name}`` of ``/v2/models/{name}``).
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: the only model references serving accepts.
MODEL_URI = r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})(?:/(?P<version>[1-9][0-9]{0,9})|@(?P<alias>[A-Za-z][A-Za-z0-9_-]{0,63}))$"

_URI_RE = re.compile(MODEL_URI)
_NAME_RE = re.compile(MODEL_NAME)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name/3`` or ``models:/name@alias`` into (name, version, alias).

    Anything else (paths, ``runs:/``, ``file://``, ``..``, percent-encoding, ``s3://``) is refused:
    serving loads only registered models, by name, so a reference cannot point outside the registry.

    Raises:
        ValueError: the reference is not a registered-model URI.
    """
    m = _URI_RE.fullmatch(uri or "")
    if m is None or ".." in uri:
        raise ValueError(
            f"model reference must be models:/NAME/VERSION or models:/NAME@ALIAS, got {uri!r}. "
            "Register the model first (a register step in a pipeline, see `aimass models versions NAME`) and serve it by name."
        )
    return m.group("name"), m.group("version"), m.group("alias")


def _check_uri(v: str) -> str:
    parse_model_uri(v)
    return v


class AutoscalingSpec(StrictModel):
    """Ray Serve's autoscaler for one deployment: replicas follow the ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas (0 allows scale to zero; the first request then waits for a cold start).")
    max_replicas: int = Field(2, ge=1, le=1000, description="Most replicas.")
    initial_replicas: int | None = Field(None, ge=0, le=1000, description="Replicas at deploy time (defaults to minReplicas).")
    target_ongoing_requests: float = Field(2.0, gt=0, le=10_000, description="Ongoing requests per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(10.0, ge=0, le=86_400, description="How long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(300.0, ge=0, le=86_400, description="How long load must stay low before removing replicas.")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSpec":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling.minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(f"autoscaling.initialReplicas ({self.initial_replicas}) must lie in [minReplicas, maxReplicas]")
        return self

    def to_serve(self) -> dict[str, Any]:
        """The ``autoscaling_config`` dict Ray Serve takes."""
        d = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        if self.initial_replicas is not None:
            d["initial_replicas"] = self.initial_replicas
        return d


class BatchingSpec(StrictModel):
    """Dynamic batching: concurrent requests are merged row-wise into one model call.

    Batching is continuous: an idle replica runs a request at once, and requests that arrive while the
    model works run together as the next batch (up to ``maxBatchSize`` rows), so batches grow with
    the load and no timer delays a request at low load."""

    enabled: bool = Field(True, description="Merge concurrent requests into one model call.")
    max_batch_size: int = Field(32, ge=1, le=65_536, description="Most rows in one model call (a request larger than this runs alone).")
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=10, description="Longest a request that finds the model idle waits for others "
                                        "to fill the batch (0: it runs at once; busy periods batch anyway).")


class DeploymentSpec(StrictModel):
    """Replicas, resources, queue bounds and health checks of one model deployment."""

    replicas: int | None = Field(None, ge=1, le=1000, description="Fixed replica count (1 when neither this nor autoscaling is set).")
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscale between min and max replicas instead of a fixed count.")
    max_ongoing_requests: int = Field(32, ge=1, le=100_000, description="Requests one replica works on at once (with batching: the most calls merged per batch).")
    max_queued_requests: int = Field(256, ge=1, le=1_000_000, description="Requests queued per caller before it answers 503/429 at once (a bounded queue).")
    num_cpus: float = Field(0.0, ge=0, le=512, description="CPU cores reserved per replica (torch uses max(1, int(numCpus)) threads). "
                            "0 by default so serving never starves training on a small local cluster; set it on shared clusters.")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per replica; the model runs on cuda when > 0.")
    memory_mb: int | None = Field(None, ge=1, le=4_194_304, description="Memory reserved per replica, MiB.")
    health_check_period_s: float = Field(10.0, gt=0, le=3600, description="Seconds between health checks; an unhealthy replica is replaced.")
    health_check_timeout_s: float = Field(30.0, gt=0, le=3600, description="A health check slower than this fails (a hung replica is replaced).")
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0, le=3600, description="How long a stopping replica may finish its requests.")
    max_constructor_retries: int = Field(3, ge=1, le=100, description="Start attempts before a version is declared broken and the rollout fails.")

    @model_validator(mode="after")
    def _one_of(self) -> "DeploymentSpec":
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set either replicas (fixed) or autoscaling, not both")
        return self

    def serve_options(self) -> dict[str, Any]:
        """``@serve.deployment`` options."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_mb:
            actor["memory"] = self.memory_mb * 1024 * 1024
        opts: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "max_constructor_retry_count": self.max_constructor_retries,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.to_serve()
        else:
            opts["num_replicas"] = self.replicas or 1
        return opts


class CanaryPolicy(StrictModel):
    """How much traffic a challenger gets and when it is rolled back automatically."""

    traffic_share: float = Field(0.1, gt=0, lt=1, description="Share of requests sent to the challenger (0.1 = 10 %).")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Roll back when the challenger's error rate over the window exceeds this.")
    max_p99_latency_ms: float | None = Field(None, gt=0, le=600_000, description="Roll back when the challenger's p99 latency over the window exceeds this.")
    window_s: float = Field(60.0, gt=0, le=86_400, description="Sliding window over which error rate and p99 are computed.")
    min_requests: int = Field(20, ge=1, le=1_000_000, description="Challenger requests in the window before a verdict is taken.")


class CanarySpec(CanaryPolicy):
    """A challenger version next to the model's champion (``modelUri``)."""

    model_uri: str = Field(description="The challenger: models:/NAME/VERSION or models:/NAME@ALIAS.")

    @field_validator("model_uri")
    @classmethod
    def _valid_uri(cls, v: str) -> str:
        return _check_uri(v)


def check_colocate(colocate: bool, num_gpus: float, field: str) -> None:
    """``colocate`` runs the champion in the ingress replicas, which never get a GPU."""
    if colocate and num_gpus > 0:
        raise ValueError(f"colocate: true runs the champion inside the ingress replicas, which have no GPU, but {field} is "
                         f"{num_gpus:g}; set colocate: false for GPU models")


class ModelSpec(StrictModel):
    """One model served by its own deployment(s): batching, autoscaling, canary."""

    name: str = Field(pattern=MODEL_NAME, description="Served name: the {name} in /v2/models/{name}/infer.")
    model_uri: str = Field(description="models:/NAME/VERSION or models:/NAME@ALIAS (an alias is resolved at each rollout).")
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec, description="Replicas, resources, queue bounds, health checks.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Dynamic batching.")
    canary: CanarySpec | None = Field(None, description="Send a share of the traffic to a challenger; roll it back automatically when it misbehaves.")
    watch_alias: bool = Field(False, description="Poll the registry and roll out automatically when an alias in modelUri (or canary.modelUri) moves.")
    max_rows_per_request: int = Field(4096, ge=1, le=1_000_000, description="Most rows (batch dimension) one request may carry.")
    allow_non_finite: bool = Field(False, description="Accept NaN and +-Inf in float inputs (refused with 400 by default).")
    colocate: bool = Field(False, description="Also load the champion into each ingress replica and answer from there, with no hop to the "
                           "model deployment: the lowest latency for small CPU models. The model deployment still gates each version "
                           "(load + readiness check), answers while an ingress loads a new champion, and serves the challenger. CPU models only.")

    @field_validator("model_uri")
    @classmethod
    def _valid_uri(cls, v: str) -> str:
        return _check_uri(v)

    @model_validator(mode="after")
    def _colocate_cpu_only(self) -> "ModelSpec":
        check_colocate(self.colocate, self.deployment.num_gpus, "deployment.numGpus")
        return self

    @property
    def replicas(self) -> int | None:
        return self.deployment.replicas


class MultiplexedModel(StrictModel):
    name: str = Field(pattern=MODEL_NAME, description="Served name.")
    model_uri: str = Field(description="models:/NAME/VERSION or models:/NAME@ALIAS.")
    max_rows_per_request: int = Field(4096, ge=1, le=1_000_000, description="Most rows one request may carry.")
    allow_non_finite: bool = Field(False, description="Accept NaN and +-Inf in float inputs.")

    @field_validator("model_uri")
    @classmethod
    def _valid_uri(cls, v: str) -> str:
        return _check_uri(v)


class MultiplexSpec(StrictModel):
    """Several registered models on one deployment; each replica keeps an LRU cache of loaded models."""

    models: list[MultiplexedModel] = Field(min_length=1, max_length=10_000, description="Models reachable through the multiplexed deployment.")
    max_models_per_replica: int = Field(4, ge=1, le=10_000, description="LRU cache size: loaded models per replica; the least recently used is evicted.")
    deployment: DeploymentSpec = Field(default_factory=DeploymentSpec, description="Replicas, resources, queue bounds.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Dynamic batching (batches never mix models).")


class AuthSpec(StrictModel):
    """Bearer-token authentication on every endpoint of the application.

    ``mode: token`` (the default) needs a token: the replicas read it from ``tokenFile``, else from the
    file named by ``AIMASS_SERVE_TOKEN_FILE``, else from ``AIMASS_SERVE_TOKEN``. A file may hold several
    tokens, one per line (rotation). ``mode: none`` is *local mode*: no token, and only callers on the
    loopback interface are answered; deploying it is refused unless Serve's HTTP proxy listens on a
    loopback address.
    """

    mode: Literal["token", "none"] = Field("token", description="token: bearer token required; none: local mode, loopback callers only.")
    token_file: str | None = Field(None, min_length=1, max_length=4096, description="Path (on the replicas' nodes) of a file with the token(s), e.g. a mounted Kubernetes secret.")

    @model_validator(mode="before")
    @classmethod
    def _no_secret_values(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("token", "tokens", "password", "secret", "apiKey", "api_key"):
                if key in data:
                    raise ValueError(
                        f"auth.{key}: a token value is never accepted in the serving config (configs are visible in "
                        "the Ray dashboard and in Kubernetes objects); write it to a file and set auth.tokenFile, "
                        "or set AIMASS_SERVE_TOKEN_FILE / AIMASS_SERVE_TOKEN in the replicas' environment"
                    )
        return data

    @field_validator("token_file")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and ("\n" in v or "\x00" in v):
            raise ValueError("auth.tokenFile must be a file path")
        return v


class IngressSpec(StrictModel):
    """The HTTP ingress deployment (protocol, auth, validation, routing, canary, metrics)."""

    replicas: int | None = Field(None, ge=1, le=1000, description="Fixed replica count (1 when neither this nor autoscaling is set).")
    autoscaling: AutoscalingSpec | None = Field(None, description="Autoscale the ingress.")
    max_ongoing_requests: int = Field(256, ge=1, le=100_000, description="Requests one ingress replica handles at once.")
    max_queued_requests: int = Field(1024, ge=1, le=1_000_000, description="Requests queued at each HTTP proxy before it answers the overload status at once.")
    overload_status: Literal[503, 429] = Field(503, description="HTTP status for requests refused because a queue is full.")
    num_cpus: float = Field(0.0, ge=0, le=512, description="CPU cores reserved per ingress replica (0: no reservation, as for models).")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="Longest the ingress waits for a model's answer (then 504).")
    max_queue_wait_s: float = Field(1.0, gt=0, le=3600, description="Longest a request waits in the ingress's batching queue "
                                    "before it is answered the overload status with Retry-After (a fast refusal, never a long wait).")

    @model_validator(mode="after")
    def _one_of(self) -> "IngressSpec":
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("ingress: set either replicas or autoscaling, not both")
        return self


class ServeConfig(StrictModel):
    """One Serve application: the V2 inference endpoint for one or more registered models.

    Example:
        >>> cfg = ServeConfig(models=[ModelSpec(name="digits", model_uri="models:/digits@champion")])
        >>> cfg.dump()["models"][0]["modelUri"]
        'models:/digits@champion'
    """

    name: str = Field("aimass", pattern=DNS_LABEL, max_length=63, description="Serve application name.")
    route_prefix: str = Field("/", pattern=r"^/[A-Za-z0-9/_-]*$", max_length=200, description="HTTP path prefix of the application (the V2 routes live under it).")
    models: list[ModelSpec] = Field(default_factory=list, max_length=1000, description="Models with their own deployments.")
    multiplex: MultiplexSpec | None = Field(None, description="Models sharing one multiplexed deployment with an LRU cache.")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="Bearer-token authentication.")
    ingress: IngressSpec = Field(default_factory=IngressSpec, description="The HTTP ingress deployment.")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, description="Largest request body; larger ones get 413 before they are parsed.")
    tracking_uri: str | None = Field(None, max_length=4096, description="MLflow tracking URI the replicas load models from (default: their AIMASS_TRACKING_URI / settings). Never with credentials.")
    registry_uri: str | None = Field(None, max_length=4096, description="MLflow registry URI (defaults to trackingUri).")
    alias_poll_interval_s: float = Field(30.0, ge=1, le=86_400, description="How often aliases are re-resolved for models with watchAlias.")
    rollout_timeout_s: float = Field(600.0, gt=0, le=86_400, description="Longest a new version may take to become ready before the rollout is abandoned.")

    @field_validator("tracking_uri", "registry_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v and "://" in v:
            parts = urlsplit(v)
            if parts.password:
                raise ValueError(
                    "trackingUri/registryUri must not carry a password (the serving config is visible in the Ray "
                    "dashboard); leave it unset and give the replicas AIMASS_TRACKING_URI in their environment"
                )
        return v

    @model_validator(mode="after")
    def _names(self) -> "ServeConfig":
        names = [m.name for m in self.models] + [m.name for m in (self.multiplex.models if self.multiplex else [])]
        if not names:
            raise ValueError("no model to serve: add an entry to models (or multiplex.models)")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"served model names must be unique, got duplicates: {', '.join(dup)}")
        return self

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def all_model_uris(self) -> list[str]:
        uris = []
        for m in self.models:
            uris.append(m.model_uri)
            if m.canary:
                uris.append(m.canary.model_uri)
        if self.multiplex:
            uris.extend(m.model_uri for m in self.multiplex.models)
        return uris


def to_serve_config_v2(cfg: ServeConfig | dict, *, http_host: str = "0.0.0.0", http_port: int = 8000,
                       request_timeout_s: float | None = None) -> dict[str, Any]:
    """The Serve config document (``ServeDeploySchema``) for a RayService's ``serveConfigV2``.

    The single application imports :data:`APP_IMPORT_PATH` and receives ``cfg`` verbatim (camelCase) as
    its ``args``; :func:`aimass.serving.app.app_builder` validates it again inside the cluster.

    Args:
        cfg: the serving config (or its dict form).
        http_host: where Serve's proxies listen (0.0.0.0 in a pod: auth must then be ``token``).
        http_port: the proxies' HTTP port.
        request_timeout_s: end-to-end HTTP timeout at the proxy (None: Serve's default, no timeout).

    Example:
        >>> doc = to_serve_config_v2(ServeConfig(models=[ModelSpec(name="d", model_uri="models:/d/1")]))
        >>> doc["applications"][0]["import_path"]
        'aimass.serving.app:app_builder'
    """
    if not isinstance(cfg, ServeConfig):
        cfg = ServeConfig.model_validate(cfg)
    if cfg.auth.mode == "none" and http_host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(
            f"auth.mode none (local mode) is refused when Serve listens on {http_host}: "
            "use auth.mode token with a token file mounted from a Secret"
        )
    http: dict[str, Any] = {"host": http_host, "port": http_port}
    if request_timeout_s is not None:
        http["request_timeout_s"] = request_timeout_s
    return {
        "proxy_location": "EveryNode",
        "http_options": http,
        "logging_config": {"enable_access_log": False, "log_level": "WARNING"},
        "applications": [
            {
                "name": cfg.name,
                "route_prefix": cfg.route_prefix,
                "import_path": APP_IMPORT_PATH,
                "args": cfg.dump(),
            }
        ],
    }
