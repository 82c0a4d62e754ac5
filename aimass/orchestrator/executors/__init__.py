"""Where steps run: local Ray tasks (default) or threads (for tests and tiny pipelines).

Whole pipelines are submitted to clusters by the Ray Jobs and Kubernetes executors in this package;
on the cluster the same orchestrator runs with :class:`RayStepRunner`.
"""

from aimass.orchestrator.executors.local import RayStepRunner, StepRunner, ThreadStepRunner

__all__ = ["RayStepRunner", "StepRunner", "ThreadStepRunner"]
