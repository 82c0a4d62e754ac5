"""What one tuning trial runs.

A trial with ``train.numWorkers == 1`` trains in its own process with the same epoch code as the
``train`` step (:func:`aimass.training.loop.run_epoch`), reporting and checkpointing every epoch so
ASHA/HyperBand can stop it early and PBT can exploit it. A trial with more workers is itself a
distributed Ray Train run: the Ray 2.60 "Train inside Tune" pattern, a TorchTrainer launched from
the trial with Tune's ``TuneReportCallback`` forwarding each epoch's report to Tune.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["TRIAL_KEYS", "trial_fn", "trial_train_config"]

TRIAL_KEYS = "__aimass__"


def trial_train_config(config: dict[str, Any]) -> dict[str, Any]:
    from aimass.spec.configs.tune import apply_overrides

    fixed = config[TRIAL_KEYS]
    sampled = {k: v for k, v in config.items() if k != TRIAL_KEYS}
    return apply_overrides(fixed["train"], sampled)


def _card(fixed: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    card = dict(fixed["card"])
    card["name"] = train.get("model", card["name"])
    card["args"] = dict(train.get("modelArgs", {}))
    return card


def trial_fn(config: dict[str, Any]) -> None:
    fixed = config[TRIAL_KEYS]
    train = trial_train_config(config)
    if int(train.get("numWorkers", 1)) > 1:
        _distributed_trial(fixed, train)
    else:
        _local_trial(fixed, train)


def _local_trial(fixed: dict[str, Any], train: dict[str, Any]) -> None:
    import torch
    from ray import tune
    from ray.tune import Checkpoint

    from aimass.data import open_dataset
    from aimass.models.io import save_model
    from aimass.training.loop import (
        TRAIN_STATE,
        _load_checkpoint,
        build_for_training,
        epoch_batches,
        evaluate_arrays,
        make_scheduler,
        optimizer_for,
        run_epoch,
        split_data,
    )

    seed = int(fixed["seed"])
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, int(fixed.get("threads", 1))))
    device = torch.device("cuda" if train.get("useGpu") and torch.cuda.is_available() else "cpu")
    ds = open_dataset(fixed["dataset"], endpoint_url=fixed.get("s3_endpoint_url"))
    model, _ = build_for_training({"card": _card(fixed, train), "train": train, "init_model": fixed.get("init_model"),
                                   "s3_endpoint_url": fixed.get("s3_endpoint_url")}, device)
    data = split_data(model, ds, train.get("trainOn", "train"), device)
    val = split_data(model, ds, "val", device)
    opt = optimizer_for(model, train)
    epochs, batch = int(train.get("epochs", 10)), int(train.get("batchSize", 64))
    sched = make_scheduler(opt, train.get("lrSchedule", {}), epochs, len(epoch_batches(len(data), batch, 0, seed, 0, 1)))
    meta: dict[str, Any] = {"epoch": 0, "history": [], "resumed_from_epoch": 0, "restarts": 0}
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        meta = _load_checkpoint(ckpt, model, opt, sched, device)
        meta["resumed_from_epoch"] = meta["epoch"]
        meta["restarts"] = meta.get("restarts", 0) + 1
        lr = float(train.get("optimizer", {}).get("lr", opt.param_groups[0]["lr"]))
        for g in opt.param_groups:  # PBT may have mutated the learning rate of the copied trial
            g["lr"] = lr
    for epoch in range(meta["epoch"], epochs):
        t0 = time.perf_counter()
        loss, correct, seen = run_epoch(model, opt, sched, None, None, data, batch, epoch, seed, 0, 1, device)
        val_loss, val_acc = evaluate_arrays(model, val)
        m = {"epoch": epoch + 1, "train_loss": loss.item() / max(1, seen), "train_accuracy": correct.item() / max(1, seen),
             "val_loss": val_loss, "val_accuracy": val_acc, "epoch_time_s": time.perf_counter() - t0,
             "restarts": meta["restarts"]}
        meta["epoch"] = epoch + 1
        meta["history"].append({k: v for k, v in m.items() if v == v})
        if fixed.get("checkpoint", True):
            with tempfile.TemporaryDirectory(prefix="aimass-trial-") as d:
                save_model(model, Path(d) / "model")
                torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                            "meta": json.dumps(meta)}, Path(d) / TRAIN_STATE)
                tune.report(m, checkpoint=Checkpoint.from_directory(d))
        else:
            tune.report(m)


def _distributed_trial(fixed: dict[str, Any], train: dict[str, Any]) -> None:
    from ray import tune
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from aimass.storage import ray_storage
    from aimass.training.loop import train_loop_per_worker

    ctx = tune.get_context()
    path, fs = ray_storage(fixed["trial_storage"], fixed.get("s3_endpoint_url"))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": train, "dataset": fixed["dataset"], "card": _card(fixed, train), "seed": fixed["seed"],
                           "s3_endpoint_url": fixed.get("s3_endpoint_url"), "threads": max(1, int(fixed.get("threads", 1))),
                           "init_model": fixed.get("init_model")},
        scaling_config=ScalingConfig(num_workers=int(train["numWorkers"]), use_gpu=bool(train.get("useGpu")),
                                     resources_per_worker={"CPU": float(fixed.get("threads", 1))}),
        run_config=RunConfig(name=f"trial-{ctx.get_trial_id()}", storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=int(train.get("maxFailures", 0))),
                             callbacks=[TuneReportCallback()]),
    )
    trainer.fit()
