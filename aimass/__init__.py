"""AI Mass: one declarative pipeline from data to a served, monitored model on Ray and Kubernetes.

The public API (everything else is internal and may change)::

    import aimass
    spec = aimass.load_pipeline("pipelines/quickstart.yaml")
    state = aimass.run(spec)                      # local Ray + MLflow, or the configured cluster
    client = aimass.Client("http://127.0.0.1:8000")
    client.infer("digits", x)

Heavy parts (Ray, torch, mlflow) are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aimass.exceptions import AimassError, SpecError, SpecErrors, StepError
from aimass.spec import PipelineSpec, load_pipeline, parse_pipeline

__version__ = "0.1.0"

__all__ = [
    "AimassError",
    "Client",
    "Pipeline",
    "PipelineSpec",
    "SpecError",
    "SpecErrors",
    "StepError",
    "__version__",
    "load_pipeline",
    "parse_pipeline",
    "run",
]

if TYPE_CHECKING:  # pragma: no cover
    from aimass.client import Client
    from aimass.pipeline import Pipeline


def run(spec: Any, **kwargs: Any):
    """Run a pipeline (a PipelineSpec, a Pipeline, a dict or a YAML path); see :func:`aimass.orchestrator.run_pipeline`."""
    from aimass.orchestrator import run_pipeline

    if hasattr(spec, "to_spec"):
        spec = spec.to_spec()
    return run_pipeline(spec, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Client":
        from aimass.client import Client

        return Client
    if name == "Pipeline":
        from aimass.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'aimass' has no attribute {name!r}")
