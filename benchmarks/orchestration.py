"""Orchestration cost: a cached re-run of the quickstart vs its cold run, and the overhead per step.

One run, on a fresh AIMASS_HOME with the persistent local Ray cluster already up (its start-up is
measured and reported separately, since a laptop pays it once per session, not per run):
  * cold run: every step executes;
  * cached re-run: same spec, every cacheable step is reused (goal: <= 5 % of the cold run);
  * overhead per step: (run wall time - time inside the steps' own code) / steps (goal: <= 1 s).

    python benchmarks/orchestration.py                       # the quickstart
    python benchmarks/orchestration.py --pipeline FILE --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default=str(ROOT / "pipelines" / "quickstart.yaml"))
    ap.add_argument("--repeat", type=int, default=2, help="cached re-runs to average")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="aimass-bench-home-"))
    os.environ["AIMASS_HOME"] = str(home)
    os.environ.setdefault("AIMASS_RAY_PORT", "6395")
    os.environ.setdefault("AIMASS_RAY_DASHBOARD_PORT", "8295")
    os.environ.setdefault("AIMASS_SERVE_PORT", "8095")

    from aimass.orchestrator import run_pipeline
    from aimass.orchestrator.ray_runtime import ensure_ray, stop_local_cluster
    from aimass.settings import Settings
    from aimass.spec import load_pipeline

    spec = load_pipeline(a.pipeline)
    settings = Settings.load()
    t0 = time.perf_counter()
    ensure_ray(home=home)
    cluster_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        cold = run_pipeline(spec, settings)
        cold_s = time.perf_counter() - t0
        assert cold.status == "SUCCEEDED", cold.error
        warm = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            again = run_pipeline(spec, settings)
            warm.append(time.perf_counter() - t0)
            assert again.status == "SUCCEEDED", again.error
        cached_steps = [n for n, s in again.steps.items() if s.cached]
        inside = sum(s.run_s or 0.0 for s in cold.steps.values())
        overhead_per_step = (cold_s - inside) / len(cold.steps)
        per_step = {n: {"duration_s": s.duration_s, "run_s": s.run_s} for n, s in cold.steps.items()}
    finally:
        import ray

        ray.shutdown()
        stop_local_cluster(home)
    warm_s = statistics.median(warm)
    result = {
        "pipeline": a.pipeline, "machine": f"{platform.machine()} {os.cpu_count()} cores", "cluster_start_s": cluster_start,
        "cold_s": cold_s, "cached_s": warm_s, "cached_over_cold": warm_s / cold_s, "cached_steps": cached_steps,
        "overhead_per_step_s": overhead_per_step, "steps": per_step,
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"orchestration: {Path(a.pipeline).name} ({len(per_step)} steps); local Ray cluster start-up {cluster_start:.1f} s (once)")
    print(f"{'step':12}{'wall s':>10}{'inside step s':>16}")
    for n, r in per_step.items():
        print(f"{n:12}{(r['duration_s'] or 0):>10.2f}{(r['run_s'] or 0):>16.2f}")
    print(f"cold run {cold_s:.2f} s, cached re-run {warm_s:.2f} s (median of {len(warm)}): "
          f"{100 * warm_s / cold_s:.1f} % of cold (goal <= 5 %); cached: {', '.join(cached_steps)}")
    print(f"orchestration overhead per step: {overhead_per_step:.2f} s (goal <= 1 s)")


if __name__ == "__main__":
    main()
