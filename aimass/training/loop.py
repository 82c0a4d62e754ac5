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

__all__ = [
    "TRAIN_STATE",
    "SplitData",
    "amp_dtype_for",
    "build_for_training",
    "epoch_batches",
    "evaluate_arrays",
    "make_optimizer",
    "make_scheduler",
    "optimizer_for",
    "run_epoch",
    "split_data",
    "split_targets",
    "train_loop_per_worker",
]

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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class SplitData:
    """One split's raw inputs and targets, batched for the model.

    Numeric inputs (tensor, table, image) become tensors on the device once; text stays as strings and
    is tokenised per batch by the model's own tokenizer (in the worker, padded to the batch's longest row).
    Targets are keyed by head name: int64 for classification, float32 for multilabel/regression.
    """

    def __init__(self, model: nn.Module, x, targets: dict[str, np.ndarray], c=None, device: torch.device | None = None) -> None:
        m = _unwrap(model)
        self.heads = m.card.head_specs
        self.kind = m.card.input_kind
        self.n = len(x)
        self.device = device or torch.device("cpu")
        if self.kind == "text":
            self.raw = np.asarray(x)
            self.inputs = None
        else:
            self.inputs = tuple(t.to(self.device) for t in m.encode(x, c))
        self.targets = {}
        for h in self.heads:
            arr = targets[h["name"]]
            dt = torch.long if h["kind"] == "classification" else torch.float32
            self.targets[h["name"]] = torch.as_tensor(np.asarray(arr), dtype=dt, device=self.device)

    def __len__(self) -> int:
        return self.n

    def batch(self, model: nn.Module, idx) -> tuple[tuple, dict[str, torch.Tensor]]:
        """(model inputs, targets) of rows ``idx``."""
        if self.inputs is None:
            ix = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else idx
            inputs = _unwrap(model).encode(self.raw[ix])
        else:
            inputs = tuple(t[idx] for t in self.inputs)
        return inputs, {k: v[idx] for k, v in self.targets.items()}


def split_targets(ds, split: str, heads: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Every head's target array for ``split``, matched by name (or by position when the names differ)."""
    if hasattr(ds, "targets_split"):
        got = ds.targets_split(split)
    else:
        got = {heads[0]["name"]: ds.split(split)[1]}
    out = {}
    vals = list(got.values())
    for i, h in enumerate(heads):
        if h["name"] in got:
            out[h["name"]] = got[h["name"]]
        elif i < len(vals):
            out[h["name"]] = vals[i]
        else:
            from aimass.exceptions import SpecError

            raise SpecError(f"the dataset has no target for head {h['name']!r}", got=sorted(got),
                            fix="The model's heads come from the data step's targets; retrain from the data step.")
    return out


def split_data(model: nn.Module, ds, split: str, device: torch.device | None = None) -> SplitData:
    """The :class:`SplitData` of a prepared dataset's split ("train", "val", "test", "train+val")."""
    x, _ = ds.split(split)
    c = ds.categorical(split) if hasattr(ds, "categorical") else None
    return SplitData(model, x, split_targets(ds, split, _unwrap(model).card.head_specs), c, device)


@torch.no_grad()
def evaluate_arrays(model: nn.Module, data: SplitData, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, primary-head accuracy) over a whole split."""
    from aimass.models.heads import heads_loss, primary_correct

    if len(data) == 0:
        return float("nan"), float("nan")
    was = model.training
    model.eval()
    loss, correct = 0.0, 0.0
    idx_all = torch.arange(len(data), device=data.device)
    for i in range(0, len(data), batch_size):
        inputs, tg = data.batch(model, idx_all[i:i + batch_size])
        out = model(*inputs)
        loss += heads_loss(out, tg, data.heads, reduction="sum").item()
        correct += primary_correct(out, tg, data.heads).item()
    model.train(was)
    acc = correct / len(data) if data.heads[0]["kind"] != "regression" else float("nan")
    return loss / len(data), acc


def run_epoch(model: nn.Module, opt, sched, scaler, amp_dtype, data: SplitData, batch_size: int,
              epoch: int, seed: int, rank: int = 0, world: int = 1, device: torch.device | None = None):
    """One pass over this rank's shard; returns (sum of losses, correct predictions, rows seen) as tensors/int.

    Shared by the Ray Train workers and by single-process tuning trials, so both train identically.
    The loss is chosen per head kind (see :func:`aimass.models.heads.heads_loss`).
    """
    from aimass.models.heads import heads_loss, primary_correct

    device = device or data.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    for idx in epoch_batches(len(data), batch_size, epoch, seed, rank, world):
        inputs, tg = data.batch(model, torch.as_tensor(idx, device=data.device))
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(*inputs)
            loss = heads_loss(out, tg, data.heads)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        n = len(idx)
        total_loss += loss.detach() * n
        correct += primary_correct(out, tg, data.heads)
        seen += n
    return total_loss, correct, seen


def build_for_training(config: dict[str, Any], device: torch.device):
    """The model a run starts from: the initial model prepared by the train step (init.from, LoRA, a text
    model's tokenizer) when there is one, else the card's fresh model; then freezing per ``train.init``."""
    from aimass.models import ModelCard, build_model
    from aimass.models.io import load_model
    from aimass.models.transfer import apply_freeze

    init_ref = config.get("init_model")
    if init_ref:
        from aimass.storage import get_store

        store = get_store(init_ref["root"], endpoint_url=config.get("s3_endpoint_url"))
        local = store.local_path(init_ref["key"])
        if local is None:
            local = store.get_dir(init_ref["key"], Path(tempfile.mkdtemp(prefix="aimass-init-")))
        model = load_model(local, device=str(device))
        model.train()
    else:
        model = build_model(ModelCard.from_dict(config["card"])).to(device)
    counts = apply_freeze(model, (config.get("train") or {}).get("init"))
    return model, counts


def optimizer_for(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer over trainable parameters, with ``init.paramGroups`` learning rates."""
    from aimass.models.transfer import param_groups

    ocfg = cfg.get("optimizer", {}) or {}
    groups = param_groups(model, ((cfg.get("init") or {}).get("paramGroups")), float(ocfg.get("lr", 1e-3)))
    return make_optimizer(groups, ocfg)


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
    model, counts = build_for_training(config, device)
    train_data = split_data(model, ds, cfg.get("trainOn", "train"), device)
    val_data = split_data(model, ds, "val", device)
    initial_val_loss = evaluate_arrays(model, val_data)[0] if config.get("init_model") else None
    model = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    opt = optimizer_for(model, cfg)
    batch_size = int(cfg.get("batchSize", 64))
    epochs = int(cfg.get("epochs", 10))
    steps_per_epoch = len(epoch_batches(len(train_data), batch_size, 0, seed, rank, world))
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
        total_loss, correct, seen = run_epoch(model, opt, sched, scaler, amp_dtype, train_data, batch_size, epoch, seed,
                                              rank, world, device)
        stats = torch.stack([total_loss, correct, torch.tensor(float(seen), device=device)])
        if world > 1:
            torch.distributed.all_reduce(stats)
        epoch_time = time.perf_counter() - t0
        val_loss, val_acc = evaluate_arrays(model, val_data)
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
            **counts,
        }
        if initial_val_loss is not None and math.isfinite(initial_val_loss):
            m["initial_val_loss"] = initial_val_loss
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
