"""Config of the ``tune`` step: hyperparameter search over a train step's settings with Ray Tune."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from aimass.spec.base import StrictModel
from aimass.spec.configs.base import StepConfig
from aimass.spec.configs.train import TrainConfig

__all__ = ["TuneConfig", "Distribution", "SchedulerConfig", "REPORTED_METRICS", "apply_overrides"]

REPORTED_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
_KINDS = ("uniform", "loguniform", "quniform", "randint", "choice", "grid")


class Distribution(StrictModel):
    """Exactly one of: ``uniform: [lo, hi]``, ``loguniform: [lo, hi]``, ``quniform: [lo, hi, q]``,
    ``randint: [lo, hi]`` (hi exclusive), ``choice: [a, b, ...]``, ``grid: [a, b, ...]``."""

    uniform: list[float] | None = Field(None, description="[low, high]: any float in the range, uniformly.")
    loguniform: list[float] | None = Field(None, description="[low, high], both > 0: uniform in log space (learning rates).")
    quniform: list[float] | None = Field(None, description="[low, high, q]: uniform, rounded to a multiple of q.")
    randint: list[int] | None = Field(None, description="[low, high]: an integer, low included, high excluded.")
    choice: list[Any] | None = Field(None, description="[a, b, ...]: one of the values at random (values may be lists).")
    grid: list[Any] | None = Field(None, description="[a, b, ...]: every value, each numSamples times (random search only).")

    @model_validator(mode="after")
    def _one(self) -> "Distribution":
        given = [k for k in _KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_KINDS)}, got {given or 'none'}")
        kind = given[0]
        v = getattr(self, kind)
        if kind in ("choice", "grid"):
            if not v:
                raise ValueError(f"{kind} needs at least one value, got an empty list")
            return self
        need = 3 if kind == "quniform" else 2
        if len(v) != need:
            raise ValueError(f"{kind} needs [{'low, high, q' if need == 3 else 'low, high'}], got {v}")
        lo, hi = v[0], v[1]
        if not lo < hi:
            raise ValueError(f"{kind}: low must be < high, got low={lo} high={hi}")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform needs positive bounds (log of {lo} is undefined)")
        if kind == "quniform" and not v[2] > 0:
            raise ValueError(f"quniform: q must be > 0, got {v[2]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any]:
        return getattr(self, self.kind)

    def extremes(self) -> list[Any]:
        """Values that bound what a trial can draw: every value of a choice/grid, both ends of a range
        (randint's high is exclusive), so validating them against the train config covers every trial."""
        v = self.values
        if self.kind in ("choice", "grid"):
            return list(v)
        if self.kind == "randint":
            return [v[0], v[1] - 1]
        return [v[0], v[1]]


class SchedulerConfig(StrictModel):
    type: Literal["fifo", "asha", "hyperband", "pbt"] = Field("fifo", description="Trial scheduler.")
    grace_period: int = Field(1, ge=1, description="ASHA/HyperBand: epochs before a trial may be stopped.")
    reduction_factor: float = Field(3.0, gt=1, le=16, description="ASHA/HyperBand: keep 1/reductionFactor per rung.")
    perturbation_interval: int = Field(2, ge=1, description="PBT: epochs between exploit/explore.")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: bottom share that copies the top share.")


class TuneConfig(StepConfig):
    """Search ``searchSpace`` (dotted camelCase train fields) for the best ``metric``. Produces the best
    config, the best trial's model and a summary."""

    INPUTS = {"dataset": True}
    OUTPUTS = ("best_config", "model", "tune_metrics")

    train: TrainConfig = Field(default_factory=TrainConfig, description="Base training settings; epochs = the most a trial may run.")
    search_space: dict[str, Distribution] = Field(min_length=1, description="Dotted TrainConfig field -> distribution, e.g. optimizer.lr: {loguniform: [1e-4, 1e-1]}.")
    metric: Literal["val_accuracy", "val_loss", "train_accuracy", "train_loss"] = Field("val_accuracy", description="Metric to optimise (reported every epoch).")
    mode: Literal["max", "min"] | None = Field(None, description="max or min; from the metric when unset.")
    num_samples: int = Field(8, ge=1, le=10_000, description="Trials (per grid point when grid is used).")
    max_concurrent_trials: int = Field(2, ge=1, le=1024, description="Trials running at once.")
    time_budget_s: float | None = Field(None, gt=0, le=30 * 86400, description="Stop starting/continuing trials after this long.")
    cpus_per_trial: float = Field(1.0, gt=0, le=256, description="CPUs per trial (per worker when train.numWorkers > 1).")
    gpus_per_trial: float = Field(0.0, ge=0, le=16, description="GPUs per trial.")
    search_algorithm: Literal["random", "optuna"] = Field("random", description="random (also runs grid points) or optuna (TPE).")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="fifo, asha, hyperband or pbt.")
    checkpoint: bool = Field(True, description="Checkpoint every epoch (needed by PBT and to retry/resume trials).")
    max_failures: int = Field(2, ge=0, le=100, description="Retries of a failed trial from its last checkpoint.")

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("min" if self.metric.endswith("loss") else "max")

    @model_validator(mode="after")
    def _checks(self) -> "TuneConfig":
        has_grid = any(d.kind == "grid" for d in self.search_space.values())
        if self.scheduler.type == "pbt":
            if not self.checkpoint:
                raise ValueError("the pbt scheduler needs checkpoints (exploit copies a better trial's checkpoint): set checkpoint: true")
            if has_grid:
                raise ValueError("pbt mutates hyperparameters; grid values are not supported with it")
            if self.search_algorithm == "optuna":
                raise ValueError("pbt replaces the search algorithm; use searchAlgorithm: random with pbt")
            if self.train.num_workers > 1:
                raise ValueError("pbt exploits a trial by loading another trial's Tune checkpoint, which distributed "
                                 "trials (train.numWorkers > 1) do not keep: use train.numWorkers: 1 with pbt")
        if self.search_algorithm == "optuna" and has_grid:
            raise ValueError("optuna does not take grid values: use choice instead")
        if self.mode and self.mode != ("min" if self.metric.endswith("loss") else "max"):
            raise ValueError(f"mode {self.mode!r} optimises {self.metric} the wrong way round")
        base = self.train.dump()
        for key, dist in self.search_space.items():
            for value in dist.extremes():
                try:
                    TrainConfig.model_validate(apply_overrides(base, {key: value}))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise ValueError(f"searchSpace key {key!r} does not fit the train config for {dist.kind} value {value!r}: "
                                     f"{where}: {first['msg']}") from None
            if _unknown_path(base, key):
                raise ValueError(f"searchSpace key {key!r} is not a train setting (e.g. optimizer.lr, batchSize, modelArgs.hidden)")
        if self.time_budget_s is None and self.num_samples * self.train.epochs > 100_000:
            raise ValueError("numSamples x epochs is over 100000 trial-epochs with no timeBudgetS: set a budget")
        return self

    def check_in_pipeline(self, step, pipeline):
        from aimass.spec.configs.train import check_model_fits_data

        return check_model_fits_data(self.train.model, ("config", "train", "model"), step, pipeline)


def _unknown_path(base: dict[str, Any], key: str) -> bool:
    parts = key.split(".")
    node: Any = base
    for i, p in enumerate(parts):
        if not isinstance(node, dict):
            return True
        if p not in node:
            # free-form maps (modelArgs) may gain keys; anything else must exist
            return not (i > 0 and parts[i - 1] == "modelArgs")
        node = node[p]
    return False


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-copy ``base`` and set dotted keys."""
    import copy

    out = copy.deepcopy(base)
    for k, v in overrides.items():
        node = out
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out
