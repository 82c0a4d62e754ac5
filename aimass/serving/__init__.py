"""Serving on Ray Serve: the Open Inference Protocol (KServe V2), batching, autoscaling, multiplexing,
canary with automatic rollback, bearer-token auth and Prometheus metrics.

Importing this package is cheap: the config models load eagerly (pure pydantic), everything that
needs Ray, torch or mlflow loads on first use.

Example:
    >>> from aimass.serving import ServeConfig, ModelSpec
    >>> cfg = ServeConfig(models=[ModelSpec(name="digits", model_uri="models:/digits@champion")])
    >>> from aimass.serving.deploy import deploy   # doctest: +SKIP
    >>> deploy(cfg)                                # doctest: +SKIP
    >>> from aimass.serving import Client          # doctest: +SKIP
    >>> Client("http://127.0.0.1:8000").infer("digits", x)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from aimass.serving.config import (
    APP_IMPORT_PATH,
    AuthSpec,
    AutoscalingSpec,
    BatchingSpec,
    CanaryPolicy,
    CanarySpec,
    DeploymentSpec,
    IngressSpec,
    ModelSpec,
    MultiplexedModel,
    MultiplexSpec,
    ServeConfig,
    parse_model_uri,
    to_serve_config_v2,
)

__all__ = [
    "APP_IMPORT_PATH",
    "AuthSpec",
    "AutoscalingSpec",
    "BatchingSpec",
    "CanaryPolicy",
    "CanarySpec",
    "Client",
    "DeploymentSpec",
    "InferResult",
    "IngressSpec",
    "ModelSpec",
    "MultiplexSpec",
    "MultiplexedModel",
    "ServeConfig",
    "app_builder",
    "parse_model_uri",
    "to_serve_config_v2",
]

_LAZY = {
    "Client": "aimass.serving.client",
    "InferResult": "aimass.serving.client",
    "app_builder": "aimass.serving.app",
}
# deploy(), status() and shutdown() live in aimass.serving.deploy (a submodule of the same name would
# shadow a package-level ``deploy`` function).


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'aimass.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
