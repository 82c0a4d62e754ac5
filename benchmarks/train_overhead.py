"""Training overhead: the `train` step's Ray Train loop vs a hand-written torch.distributed DDP loop.

Both sides, in the same run: 2 processes, gloo, the same zoo model, data, batch size, epochs, seed
and per-rank sharding. Reported separately:
  * steady-state throughput (samples/s from the end of epoch 1 to the end of the last epoch, wall
    clock, so aimass's per-epoch report + checkpoint are included), and their ratio (goal >= 0.97);
  * fixed start-up cost (process/worker-group start, data load, until the first epoch begins).

    python benchmarks/train_overhead.py            # ~2-3 minutes on 2 CPU cores
    python benchmarks/train_overhead.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_data(root: Path, n: int, features: int, seed: int) -> dict:
    from aimass.data import prepare, save_dataset
    from aimass.spec.configs.data import DataConfig
    from aimass.storage import get_store

    cfg = DataConfig.model_validate({"source": "synthetic", "synthetic": {"numSamples": n, "numFeatures": features, "numClasses": 10},
                                     "split": {"train": 0.9, "val": 0.05, "test": 0.05}})
    from aimass.data.sources import _synthetic

    x, y, names = _synthetic(cfg.synthetic, seed)
    ds, _ = prepare(x, y, names, cfg, seed)
    ref = save_dataset(ds, get_store(str(root)), "bench/dataset.npz")
    return ref.to_dict()


def card_for(dataset: dict, hidden: list[int]) -> dict:
    from aimass.data import open_dataset
    from aimass.spec.configs.train import TrainConfig
    from aimass.steps.train import model_card_for

    cfg = TrainConfig.model_validate({"model": "mlp", "modelArgs": {"hidden": hidden, "dropout": 0.0}})
    return model_card_for(cfg, dataset, open_dataset(dataset))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, dataset: dict, card: dict, epochs: int, batch: int, lr: float, seed: int, out: str):
    """The baseline: what a user would write by hand with torch.distributed."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from aimass.data import open_dataset
    from aimass.models import ModelCard, build_model
    from aimass.training.loop import epoch_batches

    t_start = time.perf_counter()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(seed)
    ds = open_dataset(dataset)
    x = torch.as_tensor(ds.x_train)
    y = torch.as_tensor(ds.y_train, dtype=torch.long)
    model = nn.parallel.DistributedDataParallel(build_model(ModelCard.from_dict(card)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ends = []
    t_first = time.perf_counter()
    for epoch in range(epochs):
        for idx in epoch_batches(len(y), batch, epoch, seed, rank, world):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        ends.append(time.perf_counter())
    dist.barrier()
    if rank == 0:
        Path(out).write_text(json.dumps({"t_start": t_start, "t_first": t_first, "ends": ends, "n": len(y)}))
    dist.destroy_process_group()


def run_baseline(dataset, card, epochs, batch, lr, seed) -> dict:
    import torch.multiprocessing as mp

    out = tempfile.mktemp(suffix=".json")
    t0 = time.perf_counter()
    mp.spawn(_ddp_worker, args=(2, _free_port(), dataset, card, epochs, batch, lr, seed, out), nprocs=2, join=True)
    total = time.perf_counter() - t0
    r = json.loads(Path(out).read_text())
    ends = r["ends"]
    steady = r["n"] * (len(ends) - 1) / (ends[-1] - ends[0])
    epoch_s = (ends[-1] - ends[0]) / (len(ends) - 1)
    return {"total_s": total, "steady_samples_per_s": steady, "startup_s": total - epoch_s * len(ends), "epoch_s": epoch_s}


def run_aimass(dataset, card, epochs, batch, lr, seed, storage: str) -> dict:
    from aimass.training.runner import fit

    t0 = time.perf_counter()
    res = fit(train_config={"epochs": epochs, "batchSize": batch, "optimizer": {"name": "adam", "lr": lr}, "amp": "off"},
              dataset=dataset, card=card, seed=seed, name="bench", storage_path=storage, num_workers=2, use_gpu=False,
              cpus_per_worker=1, max_failures=0, checkpoints_to_keep=1, work_dir=tempfile.mkdtemp())
    total = time.perf_counter() - t0
    ends = [h["wall_s"] for h in res.history]
    n = res.history[0]["samples"]
    steady = n * (len(ends) - 1) / (ends[-1] - ends[0])
    epoch_s = (ends[-1] - ends[0]) / (len(ends) - 1)
    return {"total_s": total, "steady_samples_per_s": steady, "startup_s": total - epoch_s * len(ends), "epoch_s": epoch_s,
            "final_val_accuracy": res.history[-1]["val_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    samples = a.samples or (20_000 if a.quick else 60_000)
    epochs = a.epochs or (3 if a.quick else 5)
    batch, lr, seed, hidden = 128, 1e-3, 0, [512, 512]
    import ray

    from aimass.orchestrator.ray_runtime import runtime_env_vars

    work = Path(tempfile.mkdtemp(prefix="aimass-bench-"))
    dataset = make_data(work, samples, 128, seed)
    card = card_for(dataset, hidden)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": runtime_env_vars()})
    aim = run_aimass(dataset, card, epochs, batch, lr, seed, str(work / "ray"))
    ray.shutdown()
    base = run_baseline(dataset, card, epochs, batch, lr, seed)
    ratio = aim["steady_samples_per_s"] / base["steady_samples_per_s"]
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "samples": samples, "epochs": epochs, "batch": batch,
        "baseline_ddp": base, "aimass_train": aim, "steady_throughput_ratio": ratio,
        "extra_startup_s": aim["startup_s"] - base["startup_s"],
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"train overhead: {samples} samples x 128 features, MLP {hidden}, batch {batch}/worker, {epochs} epochs, 2 workers (gloo)")
    print(f"{'':24}{'steady samples/s':>18}{'epoch s':>10}{'start-up s':>12}{'total s':>10}")
    for name, r in (("hand-written DDP", base), ("aimass train (Ray)", aim)):
        print(f"{name:24}{r['steady_samples_per_s']:>18.0f}{r['epoch_s']:>10.2f}{r['startup_s']:>12.2f}{r['total_s']:>10.2f}")
    print(f"steady-state throughput ratio aimass/DDP: {ratio:.3f} (goal >= 0.97)")
    print(f"extra fixed start-up cost: {result['extra_startup_s']:.1f} s")


if __name__ == "__main__":
    main()
