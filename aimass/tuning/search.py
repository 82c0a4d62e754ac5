"""Build and run a Ray Tune search from a :class:`~aimass.spec.configs.tune.TuneConfig`."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from aimass.exceptions import StepError

__all__ = ["SearchResult", "run_search", "param_space", "MlflowTrialLogger"]

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    best_config: dict[str, Any]
    best_metrics: dict[str, Any]
    best_checkpoint_dir: Path
    trials: list[dict[str, Any]] = field(default_factory=list)
    trial_epochs: int = 0
    restored: bool = False
    scheduler: str = ""  #: the Tune scheduler class that ran the search (e.g. "AsyncHyperBandScheduler")
    searcher: str = ""  #: the search algorithm class (e.g. "OptunaSearch", "BasicVariantGenerator")
    perturbations: int = 0  #: PBT: how many times a trial exploited another (copied its checkpoint and config)


def _dist(d):
    from ray import tune

    v = d.values
    return {
        "uniform": lambda: tune.uniform(v[0], v[1]),
        "loguniform": lambda: tune.loguniform(v[0], v[1]),
        "quniform": lambda: tune.quniform(v[0], v[1], v[2]),
        "randint": lambda: tune.randint(v[0], v[1]),
        "choice": lambda: tune.choice(v),
        "grid": lambda: tune.grid_search(v),
    }[d.kind]()


def param_space(cfg) -> dict[str, Any]:
    return {k: _dist(d) for k, d in cfg.search_space.items()}


def _scheduler(cfg):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining

    s, max_t = cfg.scheduler, cfg.train.epochs
    if s.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(s.grace_period, max_t),
                             reduction_factor=s.reduction_factor)
    if s.type == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=max_t, reduction_factor=s.reduction_factor)
    if s.type == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations=param_space(cfg), quantile_fraction=s.quantile_fraction)
    return FIFOScheduler()


def _search_alg(cfg, seed: int):
    if cfg.search_algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=cfg.max_concurrent_trials)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # random sampling (grid points expanded), seeded: the same seed draws the same trials, so schedulers
    # can be compared on identical configurations
    return BasicVariantGenerator(random_state=seed, max_concurrent=cfg.max_concurrent_trials)


class MlflowTrialLogger(Callback):
    """Runs in the tuning driver: every trial is an MLflow run nested under the tune step's run.

    After ``Tuner.restore`` (a resumed pipeline) a trial keeps its MLflow run: the runs already nested
    under the step's run are looked up by their ``aimass.trial_id`` tag and reopened, never duplicated.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, pipeline: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent, self.pipeline = tracking_uri, experiment_id, parent_run_id, pipeline
        self.runs: dict[str, str] = {}
        self._existing: dict[str, str] | None = None
        self._tracker = None

    @property
    def tracker(self):
        if self._tracker is None:
            from aimass.tracking import Tracker

            self._tracker = Tracker(self.tracking_uri, retry_for_s=30)
        return self._tracker

    def run_id_of(self, trial_id: str | None, refresh: bool = True) -> str | None:
        """The MLflow run of a trial, started by this logger or by one before a restore."""
        if trial_id in self.runs:
            return self.runs[trial_id]
        if self._existing is None or refresh:
            self._existing = {r.tags["aimass.trial_id"]: r.run_id for r in self.tracker.child_runs(self.parent, self.experiment_id)
                              if "aimass.trial_id" in r.tags}
        return self._existing.get(trial_id)

    def _run(self, trial) -> str:
        if trial.trial_id not in self.runs:
            from aimass.tuning.trial import TRIAL_KEYS

            rid = self.run_id_of(trial.trial_id, refresh=False)
            if rid is not None:  # started before the search was interrupted
                self.tracker.reopen_run(rid)
                self.runs[trial.trial_id] = rid
                return rid
            tags = {"aimass.kind": "trial", "aimass.pipeline": self.pipeline, "aimass.trial_id": trial.trial_id}
            rid = self.tracker.start_run(self.experiment_id, f"trial-{trial.trial_id}", tags, parent_run_id=self.parent)
            self.tracker.log_params(rid, {k: v for k, v in trial.config.items() if k != TRIAL_KEYS})
            self.runs[trial.trial_id] = rid
        return self.runs[trial.trial_id]

    def _safe(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # tracking must never break the search
            log.warning("MLflow trial logging failed: %s", exc)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safe(lambda: self._run(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keep = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_time_s", "restarts")
        self._safe(lambda: self.tracker.log_metrics(self._run(trial), {k: result[k] for k in keep if k in result},
                                                    step=int(result.get("training_iteration", 0))))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safe(lambda: self.tracker.end_run(self._run(trial), "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe(lambda: self.tracker.end_run(self._run(trial), "FAILED"))

    def __getstate__(self):  # pickled into Tune's experiment state: no client, no stale run map
        d = dict(self.__dict__)
        d.update(_tracker=None, runs={}, _existing=None)
        return d


def run_search(cfg, *, dataset: dict[str, Any], card: dict[str, Any], seed: int, storage_path: str, name: str = "tune",
               tracking_uri: str | None = None, experiment_id: str | None = None, parent_run_id: str | None = None,
               pipeline: str = "", s3_endpoint_url: str | None = None, work_dir: str | None = None) -> SearchResult:
    """Run (or, if an interrupted experiment exists at ``storage_path/name``, restore and finish) the search."""
    from ray import tune
    from ray.tune import FailureConfig, RunConfig, Tuner

    from aimass.storage import ray_storage
    from aimass.tuning.trial import TRIAL_KEYS, trial_fn

    # Tune's experiment state and the trials' checkpoints live in the artifact store (local or S3), so a
    # killed driver's search is restored from there by the pipeline's --resume.
    path, fs = ray_storage(storage_path, s3_endpoint_url)
    exp_path = f"{path.rstrip('/')}/{name}"
    mode = cfg.resolved_mode
    fixed = {"train": cfg.train.dump(), "dataset": dataset, "card": card, "seed": seed, "checkpoint": cfg.checkpoint,
             "threads": max(1, int(cfg.cpus_per_trial)), "s3_endpoint_url": s3_endpoint_url,
             "trial_storage": f"{storage_path.rstrip('/')}/trials"}
    workers = cfg.train.num_workers
    # A distributed trial's own process only drives its TorchTrainer, whose workers reserve the CPUs/GPUs;
    # Tune refuses an empty request, so the driver reserves a little memory and no CPU.
    per_trial = ({"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial} if workers == 1 else {"cpu": 0, "memory": 64 * 1024**2})
    trainable = tune.with_resources(trial_fn, per_trial)
    callbacks = [MlflowTrialLogger(tracking_uri, experiment_id, parent_run_id, pipeline)] if tracking_uri and parent_run_id else []
    run_config = RunConfig(name=name, storage_path=path, storage_filesystem=fs, failure_config=FailureConfig(max_failures=cfg.max_failures),
                           callbacks=callbacks, verbose=0, checkpoint_config=_checkpoint_config(cfg, mode))
    space = {**param_space(cfg), TRIAL_KEYS: fixed}
    scheduler, search_alg = _scheduler(cfg), _search_alg(cfg, seed)
    restored = Tuner.can_restore(exp_path, storage_filesystem=fs)
    if restored:
        tuner = Tuner.restore(exp_path, trainable=trainable, resume_errored=True, resume_unfinished=True,
                              storage_filesystem=fs)
    else:
        tuner = Tuner(
            trainable, param_space=space, run_config=run_config,
            tune_config=tune.TuneConfig(metric=cfg.metric, mode=mode, num_samples=cfg.num_samples, scheduler=scheduler,
                                        search_alg=search_alg, max_concurrent_trials=cfg.max_concurrent_trials,
                                        time_budget_s=cfg.time_budget_s, reuse_actors=False),
        )
    grid = tuner.fit()
    trials, trial_epochs = [], 0
    for r in grid:
        m = r.metrics or {}
        trial_epochs += int(m.get("training_iteration", 0) or 0)
        trials.append({"trial_id": m.get("trial_id"), **{k: v for k, v in (r.config or {}).items() if k != TRIAL_KEYS},
                       cfg.metric: m.get(cfg.metric), "epochs": m.get("training_iteration"), "restarts": m.get("restarts"), "error": str(r.error)[:300] if r.error else None})
    ok = [r for r in grid if r.metrics and cfg.metric in r.metrics]
    if not ok:
        errors = "; ".join(str(r.error)[:200] for r in grid if r.error) or "no trial reported the metric"
        raise StepError(f"every tuning trial failed: {errors}", fix="See the trial logs in MLflow; check the search space.")
    best = grid.get_best_result(metric=cfg.metric, mode=mode, scope="all")
    ckpt, best_row = _best_epoch(best, cfg.metric, mode)
    out = Path(work_dir or tempfile.mkdtemp()) / "best-checkpoint"
    if out.exists():
        shutil.rmtree(out)
    if ckpt is not None:
        ckpt.to_directory(str(out))
    elif best_row.get("checkpoint_path"):  # a distributed trial: its checkpoint lives in Train's storage
        from ray.train import Checkpoint

        Checkpoint(best_row["checkpoint_path"], filesystem=ray_storage(fixed["trial_storage"], s3_endpoint_url)[1]).to_directory(str(out))
    else:
        raise StepError("the best trial has no checkpoint", fix="Keep checkpoint: true in the tune step.")
    best_config = {k: v for k, v in best.config.items() if k != TRIAL_KEYS}
    # The metrics of the epoch whose checkpoint becomes the model, not the trial's last report.
    best_metrics = {k: v for k, v in best_row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    inner = getattr(search_alg, "searcher", search_alg)  # the algorithm inside a ConcurrencyLimiter
    # (a restored Tuner runs its own unpickled scheduler: its perturbations are not counted here)
    result = SearchResult(best_config, best_metrics, out, trials, trial_epochs, restored, scheduler=type(scheduler).__name__,
                          searcher=type(inner).__name__, perturbations=int(getattr(scheduler, "_num_perturbations", 0) or 0))
    if callbacks:  # a restored Tuner logs through its own unpickled callback: find the run by its tag
        cb = callbacks[0]
        try:
            rid = cb.run_id_of(best.metrics.get("trial_id"))
            if rid:
                cb.tracker.set_tags(rid, {"aimass.best_trial": "true"})
            cb.tracker.set_tags(parent_run_id, {"aimass.tune.scheduler": result.scheduler, "aimass.tune.searcher": result.searcher,
                                                "aimass.tune.perturbations": str(result.perturbations)})
        except Exception as exc:  # pragma: no cover - tracking must never fail a finished search
            log.warning("could not tag the best trial: %s", exc)
    return result


def _checkpoint_config(cfg: Any, mode: str) -> Any:
    """Keep the two best-scoring checkpoints of a trial (Tune always keeps its latest one as well,
    which PBT and restarts need), so the best epoch's weights are still there when the search ends."""
    from ray import tune

    if not cfg.checkpoint:
        return None
    return tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=cfg.metric, checkpoint_score_order=mode)


def _best_epoch(best: Any, metric: str, mode: str) -> tuple[Any, dict[str, Any]]:
    """The best trial's best epoch: (its checkpoint or None, the metrics it reported then)."""
    pick = max if mode == "max" else min
    scored = [(c, m) for c, m in (best.best_checkpoints or []) if m.get(metric) is not None]
    if scored:
        return pick(scored, key=lambda cm: cm[1][metric])
    df = best.metrics_dataframe
    if df is not None and metric in df and df[metric].notna().any():
        row = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()]
        return best.checkpoint if best.metrics.get(metric) == row[metric] else None, {k: v for k, v in row.items() if v == v}
    return best.checkpoint, dict(best.metrics or {})
