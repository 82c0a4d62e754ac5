"""The ``train`` step: Ray Train data-parallel training of a zoo model."""

from __future__ import annotations

from typing import Any

from aimass.steps.base import Step, StepContext

__all__ = ["TrainStep", "apply_best_config", "model_card_for"]


def apply_best_config(config, best: dict[str, Any] | None):
    """Overlay a tuned configuration (camelCase TrainConfig fields, dotted keys allowed) on ``config``."""
    if not best:
        return config
    merged = config.dump()
    for k, v in best.items():
        target = merged
        parts = k.split(".")
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = v
    return type(config).model_validate(merged)


def model_card_for(config, dataset: dict[str, Any], ds) -> dict[str, Any]:
    from aimass.models import ModelCard

    return ModelCard(
        name=config.model, input_shape=list(dataset["input_shape"]), num_classes=int(dataset["num_classes"]),
        args=dict(config.model_args), class_names=list(dataset["class_names"]),
        feature_mean=[float(v) for v in ds.feature_mean.reshape(-1)], feature_scale=[float(v) for v in ds.feature_scale.reshape(-1)],
    ).to_dict()


class TrainStep(Step):
    type_name = "train"
    code_modules = ("aimass.training.loop", "aimass.training.runner", "aimass.models.zoo", "aimass.models.registry")

    def ray_options(self, config, resources):
        # The step's own process only drives Ray Train; the workers reserve the CPUs/GPUs.
        return {"num_cpus": 0, "num_gpus": 0}

    def run(self, ctx: StepContext, config) -> dict:
        from aimass.data import open_dataset
        from aimass.models.io import load_model
        from aimass.training.runner import fit

        config = apply_best_config(config, ctx.inputs.get("best_config"))
        dataset = ctx.inputs["dataset"]
        ds = open_dataset(dataset, store=ctx.store)
        card = model_card_for(config, dataset, ds)
        seed = config.seed if config.seed is not None else ctx.seed
        ctx.log_params({"model": config.model, "model_args": config.model_args, "num_workers": config.num_workers,
                        "use_gpu": config.use_gpu, "epochs": config.epochs, "batch_size": config.batch_size,
                        "optimizer": config.optimizer.dump(), "lr_schedule": config.lr_schedule.dump(), "amp": config.amp,
                        "max_failures": config.max_failures, "train_on": config.train_on, "seed": seed})
        storage = ctx.store.uri(ctx.key("ray"))
        result = fit(
            train_config=config.dump(), dataset=dataset, card=card, seed=seed, name="train", storage_path=storage,
            num_workers=config.num_workers, use_gpu=config.use_gpu, cpus_per_worker=config.cpus_per_worker,
            max_failures=config.max_failures, checkpoints_to_keep=config.checkpoints_to_keep,
            tracking_uri=ctx.tracking_uri, mlflow_run_id=ctx.mlflow_run_id,
            s3_endpoint_url=ctx.settings.get("s3_endpoint_url"), work_dir=ctx.scratch(),
        )
        load_model(result.checkpoint_dir / "model")  # fail here, not downstream, if the weights are unreadable
        model_key = ctx.key("model")
        ctx.store.put_dir(result.checkpoint_dir / "model", model_key)
        last = result.history[-1] if result.history else {}
        final = {f"final_{k}": v for k, v in last.items() if k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
        final["epochs_run"] = len(result.history)
        final["restarts"] = last.get("restarts", 0)
        ctx.log_metrics(final)
        ctx.set_tags({"aimass.resumed_from_epoch": last.get("resumed_from_epoch", 0), "aimass.restarts": last.get("restarts", 0)})
        return {
            "model": {"key": model_key, "root": ctx.store.root_uri, "card": card, "history": result.history,
                      "checkpoint_storage": storage},
            "train_metrics": final,
        }
