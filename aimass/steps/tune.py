"""The ``tune`` step: Ray Tune search over train settings; the best config and model flow downstream."""

from __future__ import annotations

from typing import Any

from aimass.steps.base import Step, StepContext

__all__ = ["TuneStep"]


def _plots(ctx: StepContext, trials: list[dict[str, Any]], metric: str, keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [t for t in trials if t.get(metric) is not None]
    if not done:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(range(1, len(done) + 1), [t[metric] for t in done], c=[t.get("epochs") or 0 for t in done], cmap="viridis")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (colour: epochs run)")
    ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "plots/tuning_results.png")
    plt.close(fig)

    numeric = [k for k in keys if all(isinstance(t.get(k), (int, float)) for t in done)]
    axes = numeric + [metric]
    if len(axes) >= 2:
        data = np.array([[float(t[k]) for k in axes] for t in done])
        lo, hi = data.min(0), data.max(0)
        norm = (data - lo) / np.where(hi > lo, hi - lo, 1)
        fig, ax = plt.subplots(figsize=(8, 4))
        cmap = plt.get_cmap("viridis")
        for row, val in zip(norm, norm[:, -1], strict=True):
            ax.plot(range(len(axes)), row, color=cmap(val), alpha=0.7)
        ax.set_xticks(range(len(axes)), axes, rotation=20)
        ax.set_yticks([])
        ax.set_title("parallel coordinates (normalised; colour: metric)")
        ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "plots/parallel_coordinates.png")
        plt.close(fig)


class TuneStep(Step):
    type_name = "tune"
    code_modules = ("aimass.tuning.search", "aimass.tuning.trial", "aimass.training.loop", "aimass.models.zoo")

    def ray_options(self, config, resources):
        return {"num_cpus": 0, "num_gpus": 0}  # trials reserve their own resources

    def run(self, ctx: StepContext, config) -> dict:
        import csv
        import io

        from aimass.data import open_dataset
        from aimass.steps.train import model_card_for
        from aimass.tuning import run_search

        dataset = ctx.inputs["dataset"]
        ds = open_dataset(dataset, store=ctx.store)
        card = model_card_for(config.train, dataset, ds)
        storage = ctx.store.uri(ctx.key("tune"))  # Tune's state and checkpoints, restorable by --resume
        ctx.log_params({"metric": config.metric, "mode": config.resolved_mode, "num_samples": config.num_samples,
                        "search_algorithm": config.search_algorithm, "scheduler": config.scheduler.type,
                        "search_space": {k: {d.kind: d.values} for k, d in config.search_space.items()}})
        result = run_search(config, dataset=dataset, card=card, seed=ctx.seed, storage_path=storage,
                            tracking_uri=ctx.tracking_uri, experiment_id=ctx.experiment_id, parent_run_id=ctx.mlflow_run_id,
                            pipeline=ctx.pipeline, s3_endpoint_url=ctx.settings.get("s3_endpoint_url"), work_dir=str(ctx.scratch()))
        model_key = ctx.key("model")
        ctx.store.put_dir(result.best_checkpoint_dir / "model", model_key)
        from aimass.models.io import load_card

        best_card = load_card(result.best_checkpoint_dir / "model").to_dict()
        keys = list(config.search_space)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["trial_id", *keys, config.metric, "epochs", "restarts", "error"], extrasaction="ignore")
        w.writeheader()
        w.writerows(result.trials)
        ctx.tracker.log_text(ctx.mlflow_run_id, buf.getvalue(), "tuning_results.csv")
        _plots(ctx, result.trials, config.metric, keys)
        summary = {f"best_{config.metric}": result.best_metrics.get(config.metric), "trials": len(result.trials),
                   "trial_epochs": result.trial_epochs, "restored": int(result.restored)}
        ctx.log_metrics({k: v for k, v in summary.items() if v is not None})
        ctx.set_tags({"aimass.best_config": str(result.best_config)[:4000]})
        return {
            "best_config": result.best_config,
            "model": {"key": model_key, "root": ctx.store.root_uri, "card": best_card, "history": []},
            "tune_metrics": summary,
        }
