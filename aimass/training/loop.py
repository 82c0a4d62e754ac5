"""The training loop that runs inside each Ray Train worker.

Data-parallel (DDP through ``ray.train.torch.prepare_model``), seeded, with AMP on GPU, a learning-rate
schedule, early stopping, and a checkpoint every epoch. After a worker failure Ray Train restarts the
worker group and the loop resumes from the latest checkpoint (model, optimizer, scheduler, history and
early-stopping state), not from epoch 0.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["train_loop_per_worker", "make_optimizer", "make_scheduler", "epoch_batches", "evaluate_arrays", "run_epoch", "amp_dtype_for", "TRAIN_STATE"]

TRAIN_STATE = "train_state.pt"


def make_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    name, lr, wd = cfg.get("name", "adam"), float(cfg.get("lr", 1e-3)), float(cfg.get("weightDecay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def make_scheduler(opt, cfg: dict, epochs: int, steps_per_epoch: int):
    """A per-batch scheduler (or None)."""
    name = cfg.get("name", "none")
    total = max(1, epochs * steps_per_epoch)
    if name == "cosine":
        warm = int(cfg.get("warmupEpochs", 0)) * steps_per_epoch

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / max(1, warm)
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        return torch.optim.lr_scheduler.LambdaLR(opt, f)
    if name == "step":
        size = int(cfg.get("stepSize", 10)) * steps_per_epoch
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, size), gamma=float(cfg.get("gamma", 0.1)))
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=total)
    return None


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[np.ndarray]:
    """This rank's batches for one epoch: a seeded permutation, sharded like DistributedSampler."""
    perm = np.random.default_rng(seed + epoch).permutation(n)
    per_rank = int(math.ceil(n / world))
    perm = np.concatenate([perm, perm[: per_rank * world - n]])  # pad so every rank has the same count
    mine = perm[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


@torch.no_grad()
def evaluate_arrays(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole arrays."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        out = model(x[i:i + batch_size]).float()
        loss += nn.functional.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def run_epoch(model: nn.Module, opt, sched, scaler, amp_dtype, x: torch.Tensor, y: torch.Tensor, batch_size: int,
              epoch: int, seed: int, rank: int = 0, world: int = 1, device: torch.device | None = None):
    """One pass over this rank's shard; returns (sum of losses, correct predictions, rows seen) as tensors/int.

    Shared by the Ray Train workers and by single-process tuning trials, so both train identically.
    """
    device = device or x.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    for idx in epoch_batches(len(y), batch_size, epoch, seed, rank, world):
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(xb)
            loss = nn.functional.cross_entropy(out.float(), yb)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        total_loss += loss.detach() * len(yb)
        correct += (out.detach().argmax(1) == yb).sum()
        seen += len(yb)
    return total_loss, correct, seen


def amp_dtype_for(amp: str, device: torch.device):
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp in ("bf16", "auto") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if amp == "auto" else None


def _load_checkpoint(checkpoint, model: nn.Module, opt, sched, device) -> dict[str, Any]:
    from aimass.exceptions import StepError
    from aimass.models.io import WEIGHT_FILES

    with checkpoint.as_directory() as d:
        d = Path(d)
        try:
            from safetensors.torch import load_file

            state = load_file(str(d / "model" / WEIGHT_FILES["safetensors"]), device=str(device))
            train_state = torch.load(d / TRAIN_STATE, map_location=device, weights_only=True)
        except Exception as exc:  # a truncated/corrupt checkpoint must never be loaded silently
            raise StepError(f"checkpoint {d.name} is unreadable: {exc}",
                            fix="Delete the corrupt checkpoint directory to resume from the previous one.") from exc
    target = model.module if hasattr(model, "module") else model
    target.load_state_dict(state)
    opt.load_state_dict(train_state["optimizer"])
    if sched is not None and train_state.get("scheduler"):
        sched.load_state_dict(train_state["scheduler"])
    meta = json.loads(train_state["meta"])
    return meta


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker. ``config`` is built by :class:`aimass.steps.train.TrainStep`."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from aimass.data import open_dataset
    from aimass.models import ModelCard, build_model
    from aimass.models.io import save_model

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = ray.train.torch.get_device()

    cfg = config["train"]
    ds = open_dataset(config["dataset"], endpoint_url=config.get("s3_endpoint_url"))
    x_np, y_np = ds.split(cfg.get("trainOn", "train"))
    x_tr = torch.as_tensor(x_np, dtype=torch.float32, device=device)
    y_tr = torch.as_tensor(y_np, dtype=torch.long, device=device)
    x_val = torch.as_tensor(ds.x_val, dtype=torch.float32, device=device)
    y_val = torch.as_tensor(ds.y_val, dtype=torch.long, device=device)

    card = ModelCard.from_dict(config["card"])
    model = build_model(card).to(device)
    model = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    opt = make_optimizer(model.parameters(), cfg.get("optimizer", {}))
    batch_size = int(cfg.get("batchSize", 64))
    epochs = int(cfg.get("epochs", 10))
    steps_per_epoch = len(epoch_batches(len(y_tr), batch_size, 0, seed, rank, world))
    sched = make_scheduler(opt, cfg.get("lrSchedule", {}), epochs, steps_per_epoch)
    amp_dtype = amp_dtype_for(cfg.get("amp", "auto"), device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    es = cfg.get("earlyStopping")

    meta: dict[str, Any] = {"epoch": 0, "best": None, "bad_epochs": 0, "history": [], "resumed_from_epoch": 0, "restarts": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        meta = _load_checkpoint(checkpoint, model, opt, sched, device)
        meta["resumed_from_epoch"] = meta["epoch"]
        meta["restarts"] = meta.get("restarts", 0) + 1

    model.train()
    start_epoch = meta["epoch"]
    t_loop = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        total_loss, correct, seen = run_epoch(model, opt, sched, scaler, amp_dtype, x_tr, y_tr, batch_size, epoch, seed,
                                              rank, world, device)
        stats = torch.stack([total_loss, correct, torch.tensor(float(seen), device=device)])
        if world > 1:
            torch.distributed.all_reduce(stats)
        epoch_time = time.perf_counter() - t0
        val_loss, val_acc = evaluate_arrays(model, x_val, y_val)
        m = {
            "epoch": epoch + 1,
            "train_loss": stats[0].item() / max(1.0, stats[2].item()),
            "train_accuracy": stats[1].item() / max(1.0, stats[2].item()),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "epoch_time_s": epoch_time,
            "samples_per_s": stats[2].item() / max(epoch_time, 1e-9),
            "resumed_from_epoch": meta["resumed_from_epoch"],
            "restarts": meta["restarts"],
            "samples": int(stats[2].item()),
        }
        meta["history"].append({k: v for k, v in m.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        meta["epoch"] = epoch + 1
        stop = False
        if es:
            val = m.get(es["metric"])
            if val is not None and math.isfinite(val):
                better = meta["best"] is None or (
                    val < meta["best"] - es.get("minDelta", 0.0) if es.get("mode", "min") == "min" else val > meta["best"] + es.get("minDelta", 0.0))
                if better:
                    meta["best"], meta["bad_epochs"] = val, 0
                else:
                    meta["bad_epochs"] += 1
                    stop = meta["bad_epochs"] >= int(es.get("patience", 3))
        m["stopped_early"] = int(stop)
        if rank == 0:
            # wall clock since this worker group's loop started, at the moment of reporting (checkpoint included
            # in the next interval): what the steady-state throughput of the step really is.
            m["wall_s"] = time.perf_counter() - t_loop
            meta["history"][-1]["wall_s"] = m["wall_s"]
            with tempfile.TemporaryDirectory(prefix="aimass-ckpt-") as d:
                target = model.module if hasattr(model, "module") else model
                save_model(target, Path(d) / "model", "safetensors")
                torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                            "meta": json.dumps(meta)}, Path(d) / TRAIN_STATE)
                ray.train.report(m, checkpoint=Checkpoint.from_directory(d))
        else:
            ray.train.report(m, checkpoint=None)
        if stop:
            break
    if os.environ.get("AIMASS_TRAIN_DEBUG"):
        print(f"[aimass] rank {rank} done at epoch {meta['epoch']}")
