"""Tuning: ASHA vs plain random search on the same space, trials and max epochs, in one run;
plus Ray Tune's own overhead (trials per second for trivial trials).

Goal: ASHA consumes <= 1/3 of random search's trial-epochs, and its best validation accuracy is
within 0.5 points of random search's.

    python benchmarks/tune_asha_vs_random.py            # 16 trials x 20 epochs each side
    python benchmarks/tune_asha_vs_random.py --quick    # 8 trials x 9 epochs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    trials, epochs = (8, 9) if a.quick else (16, 20)

    import ray
    from ray import tune

    from aimass.data import load_source, open_dataset, prepare, save_dataset
    from aimass.orchestrator.ray_runtime import runtime_env_vars
    from aimass.spec.configs.data import DataConfig
    from aimass.spec.configs.tune import TuneConfig
    from aimass.steps.train import model_card_for
    from aimass.storage import get_store
    from aimass.tuning import run_search

    work = Path(tempfile.mkdtemp(prefix="aimass-tune-bench-"))
    store = get_store(str(work / "artifacts"))
    dcfg = DataConfig.model_validate({"source": "builtin:digits"})
    x, y, names = load_source(dcfg, 0)
    ds, _ = prepare(x, y, names, dcfg, 0)
    ref = save_dataset(ds, store, "data/dataset.npz").to_dict()
    space = {"optimizer.lr": {"loguniform": [1e-4, 3e-1]}, "modelArgs.hidden": {"choice": [[32], [128], [256, 128]]},
             "batchSize": {"choice": [16, 64]}}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": runtime_env_vars()})
    results = {}
    for sched in ("fifo", "asha"):
        cfg = TuneConfig.model_validate({"train": {"model": "mlp", "epochs": epochs}, "searchSpace": space, "numSamples": trials,
                                         "maxConcurrentTrials": 2, "scheduler": {"type": sched, "gracePeriod": 1, "reductionFactor": 3}})
        card = model_card_for(cfg.train, ref, open_dataset(ref))
        t0 = time.perf_counter()
        r = run_search(cfg, dataset=ref, card=card, seed=0, storage_path=str(work / f"tune-{sched}"), work_dir=str(work / sched))
        results[sched] = {"trial_epochs": r.trial_epochs, "best_val_accuracy": r.best_metrics["val_accuracy"],
                          "wall_s": time.perf_counter() - t0}

    # Tune's own overhead: trials that do nothing but report once.
    def trivial(config):
        tune.report({"score": config["x"]})

    n = 40 if a.quick else 100
    t0 = time.perf_counter()
    tune.Tuner(tune.with_resources(trivial, {"cpu": 0.5}), param_space={"x": tune.uniform(0, 1)},
               tune_config=tune.TuneConfig(num_samples=n, metric="score", mode="max"),
               run_config=tune.RunConfig(storage_path=str(work / "trivial"), verbose=0)).fit()
    trivial_tps = n / (time.perf_counter() - t0)
    ray.shutdown()

    rnd, asha = results["fifo"], results["asha"]
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "trials": trials, "max_epochs": epochs,
           "random": rnd, "asha": asha, "epoch_ratio": asha["trial_epochs"] / rnd["trial_epochs"],
           "accuracy_gap_points": 100 * (rnd["best_val_accuracy"] - asha["best_val_accuracy"]), "trivial_trials_per_s": trivial_tps}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"tuning: digits MLP, {trials} trials x up to {epochs} epochs each, 2 concurrent, same space and seed")
    print(f"{'':16}{'trial-epochs':>14}{'best val acc':>14}{'wall s':>10}")
    for name, r in (("random (FIFO)", rnd), ("ASHA", asha)):
        print(f"{name:16}{r['trial_epochs']:>14}{r['best_val_accuracy']:>14.4f}{r['wall_s']:>10.1f}")
    print(f"ASHA/random trial-epochs: {out['epoch_ratio']:.3f} (goal <= 0.333); accuracy gap: {out['accuracy_gap_points']:+.2f} points (goal <= 0.5)")
    print(f"Tune overhead: {trivial_tps:.1f} trivial trials/s ({n} trials)")


if __name__ == "__main__":
    main()
