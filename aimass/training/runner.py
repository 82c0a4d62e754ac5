"""Ray Train: the only module that builds a TorchTrainer.

``fit`` runs the data-parallel loop on ``num_workers`` workers, checkpoints every epoch into the run's
storage, restarts the worker group from the latest checkpoint up to ``max_failures`` times, and logs
each epoch's metrics to the step's MLflow run from the Train controller (retrying if MLflow blips).
Calling ``fit`` again with the same ``name`` and ``storage_path`` (after a driver crash) resumes from the
latest checkpoint stored there.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimass.exceptions import RetryableStepError, StepError

__all__ = ["FitResult", "MlflowEpochLogger", "fit"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    checkpoint_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    storage_path: str = ""


try:
    from ray.train.v2.api.callback import UserCallback as _UserCallback
except ImportError:  # pragma: no cover
    _UserCallback = object  # type: ignore[misc,assignment]


class MlflowEpochLogger(_UserCallback):
    """Runs in the Ray Train controller: logs rank 0's metrics of every epoch to an MLflow run."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "") -> None:
        self.tracking_uri, self.run_id, self.prefix = tracking_uri, run_id, prefix
        self._tracker = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not metrics:
            return
        from aimass.tracking import Tracker

        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri, retry_for_s=30)
        m = metrics[0]
        step = int(m.get("epoch", 0))
        try:
            self._tracker.log_metrics(self.run_id, {f"{self.prefix}{k}": v for k, v in m.items() if k != "epoch"}, step=step)
        except Exception as exc:  # never fail training because tracking is down
            log.warning("could not log epoch %s metrics to MLflow: %s", step, exc)

    def __getstate__(self):
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "prefix": self.prefix, "_tracker": None}


def fit(*, train_config: dict[str, Any], dataset: dict[str, Any], card: dict[str, Any], seed: int, name: str,
        storage_path: str, num_workers: int, use_gpu: bool, cpus_per_worker: float, max_failures: int,
        checkpoints_to_keep: int, tracking_uri: str | None = None, mlflow_run_id: str | None = None,
        s3_endpoint_url: str | None = None, work_dir: str | Path | None = None,
        init_model: dict[str, Any] | None = None) -> FitResult:
    """Train with Ray Train's TorchTrainer; returns the latest checkpoint copied to a local directory.

    ``init_model`` is the store reference of the model to start from (prepared by the train step), if any."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from aimass.storage import ray_storage
    from aimass.training.loop import train_loop_per_worker

    path, fs = ray_storage(storage_path, s3_endpoint_url)
    callbacks = [MlflowEpochLogger(tracking_uri, mlflow_run_id)] if tracking_uri and mlflow_run_id else []
    loop_config = {"train": train_config, "dataset": dataset, "card": card, "seed": seed,
                   "s3_endpoint_url": s3_endpoint_url, "threads": max(1, int(cpus_per_worker)),
                   "init_model": init_model}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(
            name=name, storage_path=path, storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_to_keep),
            callbacks=callbacks,
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cpus_per_worker)))}},
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        msg = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        raise StepError(f"training failed after {max_failures} allowed worker restart(s): {msg}",
                        fix="See the worker logs above; raise maxFailures for flaky hardware.") from exc
    if result.checkpoint is None:
        raise RetryableStepError("training finished without a checkpoint", fix="This is a bug in the training loop; retry the step.")
    out = Path(work_dir or os.getcwd()) / "final-checkpoint"
    if out.exists():
        shutil.rmtree(out)
    result.checkpoint.to_directory(str(out))
    import json

    import torch

    from aimass.training.loop import TRAIN_STATE

    state = torch.load(out / TRAIN_STATE, map_location="cpu", weights_only=True)
    meta = json.loads(state["meta"])
    return FitResult(checkpoint_dir=out, metrics=dict(result.metrics or {}), history=meta.get("history", []),
                     storage_path=storage_path)
