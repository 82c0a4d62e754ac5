"""The step contract: a config model (in :mod:`aimass.spec.configs`) plus a class with ``run``.

A step reads typed inputs (the JSON outputs of upstream steps), does its work, and returns its
outputs as a JSON-serialisable dict whose keys are the config's ``OUTPUTS``. Large things (data,
weights, checkpoints) go to the artifact store under ``ctx.prefix`` and travel as URIs.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aimass.exceptions import SpecError

__all__ = ["Step", "StepContext", "STEPS", "get_step", "register_step"]

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    """What a running step can see and use.

    Attributes:
        run_id: the aimass run id (also the MLflow parent run id).
        pipeline: the pipeline name.
        step_name, step_type: this step.
        inputs: input name -> the upstream output value (see ``INPUTS`` of the config).
        artifact_root: root URI of the artifact store (local path or s3://...).
        prefix: store key under which this step writes (``runs/<run>/steps/<name>``).
        tracking_uri, registry_uri, experiment_id, mlflow_run_id: where to log; this step's child run.
        seed: the seed for this step.
        attempt: 1 for the first try, 2 for the first retry, ...
        work_dir: a local scratch directory for this step.
        state_key: store key of a small JSON blob the step may use to resume after a crash.
    """

    run_id: str
    pipeline: str
    step_name: str
    step_type: str
    inputs: dict[str, Any]
    artifact_root: str
    prefix: str
    tracking_uri: str
    registry_uri: str | None
    experiment_id: str
    mlflow_run_id: str
    seed: int
    attempt: int = 1
    work_dir: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)

    _store: Any = field(default=None, repr=False)
    _tracker: Any = field(default=None, repr=False)

    @property
    def store(self):
        if self._store is None:
            from aimass.storage import get_store

            self._store = get_store(self.artifact_root, endpoint_url=self.settings.get("s3_endpoint_url"))
        return self._store

    @property
    def tracker(self):
        if self._tracker is None:
            from aimass.tracking import Tracker

            self._tracker = Tracker(self.tracking_uri, self.registry_uri)
        return self._tracker

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def scratch(self, *parts: str) -> Path:
        p = Path(self.work_dir, *parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(self.mlflow_run_id, metrics, step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker.log_params(self.mlflow_run_id, params)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tracker.set_tags(self.mlflow_run_id, tags)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_store"] = None
        d["_tracker"] = None
        return d


class Step(ABC):
    """Base class of step implementations. Subclasses set ``type_name`` and implement ``run``."""

    type_name: ClassVar[str]
    # Steps whose effect lives outside the artifact store (a running deployment) are never served from
    # the cache: a cached "deployed" would be a lie once the deployment is gone. Re-running is idempotent.
    cacheable: ClassVar[bool] = True

    @abstractmethod
    def run(self, ctx: StepContext, config: Any) -> dict[str, Any]:
        """Do the work; return outputs keyed by the config's ``OUTPUTS``."""

    def code_version(self) -> str:
        """Part of the cache key: changes when the step's code changes."""
        import hashlib
        import inspect

        h = hashlib.sha256()
        for cls in type(self).__mro__:
            if cls in (Step, ABC, object):
                continue
            try:
                h.update(inspect.getsource(importlib.import_module(cls.__module__)).encode())
            except (OSError, TypeError):
                h.update(cls.__qualname__.encode())
        for mod in getattr(self, "code_modules", ()):
            try:
                h.update(inspect.getsource(importlib.import_module(mod)).encode())
            except (OSError, TypeError):
                h.update(mod.encode())
        return h.hexdigest()[:16]

    def ray_options(self, config: Any, resources: dict[str, Any]) -> dict[str, Any]:
        """Resources of the Ray task that runs this step (train/tune ask for their workers themselves)."""
        opts: dict[str, Any] = {"num_cpus": resources.get("cpu", 1), "num_gpus": resources.get("gpu", 0)}
        if resources.get("memory_mb"):
            opts["memory"] = int(resources["memory_mb"]) * 1024 * 1024
        return opts


# type name -> "module:Class", imported lazily (steps pull in torch, Ray Train, ...)
STEPS: dict[str, Any] = {
    "data": "aimass.steps.data:DataStep",
    "train": "aimass.steps.train:TrainStep",
    "evaluate": "aimass.steps.evaluate:EvaluateStep",
    "register": "aimass.steps.register:RegisterStep",
    "tune": "aimass.steps.tune:TuneStep",
    "deploy": "aimass.steps.deploy:DeployStep",
    "compress": "aimass.steps.compress:CompressStep",
    "export": "aimass.steps.compress:ExportStep",
    "ensemble": "aimass.steps.compress:EnsembleStep",
}


def register_step(type_name: str, step_cls: type[Step] | str, config_cls: Any = None) -> None:
    """Add a step type (and its config model) to the registries."""
    STEPS[type_name] = step_cls
    if config_cls is not None:
        from aimass.spec.configs import register_step_config

        register_step_config(type_name, config_cls)


def get_step(type_name: str) -> Step:
    ref = STEPS.get(type_name)
    if ref is None:
        raise SpecError(f"unknown step type {type_name!r}", fix=f"Known types: {', '.join(sorted(STEPS))}.")
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        ref = getattr(importlib.import_module(module), attr)
        STEPS[type_name] = ref
    return ref()
