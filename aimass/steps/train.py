"""The ``train`` step: Ray Train data-parallel training of a zoo model."""

from __future__ import annotations

from typing import Any

import numpy as np

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
    """The card of the model this step trains: what it takes (the dataset's modality and preprocessing) and its heads."""
    from aimass.models import ModelCard

    modality = getattr(ds, "modality", None) or dataset.get("modality") or "tensor"
    targets = getattr(ds, "targets", None) or []
    heads = [t.to_dict() if hasattr(t, "to_dict") else dict(t) for t in targets]
    heads = [{"name": h["name"], "kind": h.get("kind", "classification"), "class_names": list(h.get("class_names", [])),
              "loss_weight": float(h.get("loss_weight", 1.0))} for h in heads]
    if len(heads) == 1 and heads[0]["kind"] == "classification" and heads[0]["loss_weight"] == 1.0:
        heads = []  # one classification head: the card's default (and what old cards say)
    mean = np.asarray(ds.feature_mean, dtype=np.float64).reshape(-1)
    scale = np.asarray(ds.feature_scale, dtype=np.float64).reshape(-1)
    return ModelCard(
        name=config.model, input_shape=list(dataset.get("input_shape") or list(np.asarray(ds.x_train).shape[1:])),
        num_classes=int(dataset["num_classes"]), args=dict(config.model_args), class_names=list(dataset["class_names"]),
        feature_mean=[float(v) for v in mean] if mean.size else None, feature_scale=[float(v) for v in scale] if scale.size else None,
        input_kind=modality, heads=heads, preprocess=dict(getattr(ds, "preprocess", None) or {}),
    ).to_dict()


def prepare_initial_model(config, card: dict[str, Any], ctx: StepContext) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
    """Build the model a run starts from once, in the step (``init.from``, LoRA, a text model's tokenizer), and put it in the
    artifact store so every worker loads the same weights. Returns (store reference or None, completed card, lineage)."""
    from aimass.models import ModelCard
    from aimass.models.io import save_model
    from aimass.models.transfer import init_model, resolve_source

    if config.init is None and config.model != "text-transformer":
        return None, card, {}
    init = config.init.dump() if config.init is not None else None
    source = None
    if config.init is not None:
        source = resolve_source(config.init.from_, tracking_uri=ctx.tracking_uri, registry_uri=ctx.registry_uri,
                                s3_endpoint_url=ctx.settings.get("s3_endpoint_url"), work_dir=ctx.scratch("init-source"))
        if source.kind == "aimass" and "model" not in config.model_fields_set:
            # starting from an aimass model: its architecture unless the step names one
            from aimass.models.io import load_card

            src_card = load_card(source.path)
            card = dict(card, name=src_card.name, args=dict(src_card.args) if "model_args" not in config.model_fields_set else card["args"])
            card["args"].pop("lora", None)
    model, full_card, lineage = init_model(ModelCard.from_dict(card), init, source)
    out = save_model(model, ctx.scratch("init-model"))
    key = ctx.key("init")
    ctx.store.put_dir(out, key)
    return {"key": key, "root": ctx.store.root_uri}, full_card.to_dict(), lineage


class TrainStep(Step):
    type_name = "train"
    code_modules = ("aimass.training.loop", "aimass.training.runner", "aimass.models.zoo", "aimass.models.registry",
                    "aimass.models.heads", "aimass.models.text", "aimass.models.transfer", "aimass.models.vision", "aimass.models.tabular")

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
        init_ref, card, lineage = prepare_initial_model(config, card, ctx)
        seed = config.seed if config.seed is not None else ctx.seed
        ctx.log_params({"model": config.model, "model_args": config.model_args, "num_workers": config.num_workers,
                        "use_gpu": config.use_gpu, "epochs": config.epochs, "batch_size": config.batch_size,
                        "optimizer": config.optimizer.dump(), "lr_schedule": config.lr_schedule.dump(), "amp": config.amp,
                        "max_failures": config.max_failures, "train_on": config.train_on, "seed": seed,
                        **({"init": config.init.dump()} if config.init else {})})
        if lineage:
            ctx.set_tags({f"aimass.init.{k}": str(v) for k, v in lineage.items() if k in ("source", "model", "version", "new_head")})
        storage = ctx.store.uri(ctx.key("ray"))
        result = fit(
            train_config=config.dump(), dataset=dataset, card=card, seed=seed, name="train", storage_path=storage,
            num_workers=config.num_workers, use_gpu=config.use_gpu, cpus_per_worker=config.cpus_per_worker,
            max_failures=config.max_failures, checkpoints_to_keep=config.checkpoints_to_keep,
            tracking_uri=ctx.tracking_uri, mlflow_run_id=ctx.mlflow_run_id,
            s3_endpoint_url=ctx.settings.get("s3_endpoint_url"), work_dir=ctx.scratch(), init_model=init_ref,
        )
        trained = load_model(result.checkpoint_dir / "model")  # fail here, not downstream, if the weights are unreadable
        if config.init is not None and config.init.lora is not None and config.init.lora.merge:
            from aimass.models.io import save_model
            from aimass.models.transfer import merge_lora

            save_model(merge_lora(trained), result.checkpoint_dir / "model")
            trained = load_model(result.checkpoint_dir / "model")
        card = trained.card.to_dict()
        model_key = ctx.key("model")
        ctx.store.put_dir(result.checkpoint_dir / "model", model_key)
        last = result.history[-1] if result.history else {}
        final = {f"final_{k}": v for k, v in last.items() if k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
        first = result.history[0] if result.history else {}
        for k in ("initial_val_loss", "trainable_params", "total_params"):
            if k in first:
                final[k] = first[k]
        final["epochs_run"] = len(result.history)
        final["restarts"] = last.get("restarts", 0)
        ctx.log_metrics(final)
        ctx.set_tags({"aimass.resumed_from_epoch": last.get("resumed_from_epoch", 0), "aimass.restarts": last.get("restarts", 0)})
        return {
            "model": {"key": model_key, "root": ctx.store.root_uri, "card": card, "history": result.history,
                      "checkpoint_storage": storage},
            "train_metrics": final,
        }
