"""Experiment tracking and the model registry. The only package that imports mlflow.

Every pipeline run is an MLflow parent run; every step (and every tuning trial) a child run tagged
with ``mlflow.parentRunId``. Calls are retried with backoff for a bounded time so a tracking server
that blips does not kill a long training run.
"""

from aimass.tracking.client import RunInfo, Tracker, flatten_params

__all__ = ["RunInfo", "Tracker", "flatten_params"]
