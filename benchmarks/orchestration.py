"""Orchestration cost: a cached re-run of the quickstart vs its cold run, and the overhead per step.

One run, on a fresh AIMASS_HOME with the persistent local Ray cluster already up (its start-up is
measured and reported separately, since a laptop pays it once per session, not per run):
  * first run on a fresh home (every step executes; MLflow's SQLite database is created too);
  * cached re-runs: same spec, every cacheable step is reused (goal: <= 5 % of the cold run);
  * cold run on the home now in use: the same pipeline with another seed, so every step executes again;
  * overhead per step: (run wall time - time inside the steps' own code) / steps (goal: <= 1 s),
    split into set-up before the first step, dispatch around each step (Ray task start, inputs and
    outputs), time between steps and the end of the run.

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

    import yaml

    from aimass.orchestrator.ray_runtime import ensure_ray, stop_local_cluster
    from aimass.settings import Settings
    from aimass.spec import load_pipeline, parse_pipeline

    spec = load_pipeline(a.pipeline)
    doc = yaml.safe_load(Path(a.pipeline).read_text())
    doc["spec"]["seed"] = int(doc["spec"].get("seed", 0)) + 1  # another seed: every cache key changes
    reseeded = parse_pipeline(doc, source=a.pipeline)
    settings = Settings.load()
    t0 = time.perf_counter()
    ensure_ray(home=home)
    cluster_start = time.perf_counter() - t0
    try:
        first = timed_run(spec, settings)        # a fresh AIMASS_HOME: creates the MLflow database too
        cached = [timed_run(spec, settings) for _ in range(a.repeat)]
        cold = timed_run(reseeded, settings)     # every step runs again, on a home already in use
    finally:
        import ray

        ray.shutdown()
        stop_local_cluster(home)
    cached_steps = [n for n, st in cached[-1]["state"].steps.items() if st.cached]
    cached_s = statistics.median(c["wall_s"] for c in cached)
    result = {
        "pipeline": a.pipeline, "machine": f"{platform.machine()} {os.cpu_count()} cores", "cluster_start_s": cluster_start,
        "first_run": first["breakdown"], "cold_run": cold["breakdown"], "cached_s": cached_s,
        "cached_over_cold": cached_s / cold["wall_s"], "cached_steps": cached_steps,
        "overhead_per_step_s": cold["breakdown"]["overhead_per_step_s"],
        "steps": {n: {"duration_s": st.duration_s, "run_s": st.run_s} for n, st in cold["state"].steps.items()},
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"orchestration: {Path(a.pipeline).name} ({len(result['steps'])} steps); local Ray cluster start-up {cluster_start:.1f} s (once)")
    print(f"{'step':12}{'wall s':>10}{'inside step s':>16}")
    for n, r in result["steps"].items():
        print(f"{n:12}{(r['duration_s'] or 0):>10.2f}{(r['run_s'] or 0):>16.2f}")
    print(f"{'run':34}{'wall s':>8}{'in steps s':>12}{'setup s':>9}{'dispatch s':>12}{'between s':>11}{'end s':>7}")
    for label, b in (("first run (fresh home, new MLflow db)", first["breakdown"]), ("cold run (home in use, new seed)", cold["breakdown"])):
        print(f"{label[:34]:34}{b['wall_s']:>8.2f}{b['inside_s']:>12.2f}{b['setup_s']:>9.2f}{b['dispatch_s']:>12.2f}"
              f"{b['between_s']:>11.2f}{b['teardown_s']:>7.2f}")
    print(f"cached re-run {cached_s:.2f} s (median of {len(cached)}): {100 * result['cached_over_cold']:.1f} % of the cold run "
          f"(goal <= 5 %); cached: {', '.join(cached_steps)}")
    print(f"orchestration overhead per step, cold run: {result['overhead_per_step_s']:.2f} s (goal <= 1 s); "
          f"first run on a fresh home: {first['breakdown']['overhead_per_step_s']:.2f} s")


def timed_run(spec, settings) -> dict:
    """Run once; split the wall time into the steps' own code and what orchestration adds around it."""
    from aimass.orchestrator import run_pipeline

    t_wall, t0 = time.time(), time.perf_counter()
    state = run_pipeline(spec, settings)
    wall = time.perf_counter() - t0
    assert state.status == "SUCCEEDED", state.error
    steps = sorted(state.steps.values(), key=lambda st: st.started_at)
    inside = sum(st.run_s or 0.0 for st in steps)
    dispatch = sum((st.duration_s or 0.0) - (st.run_s or 0.0) for st in steps)  # Ray task start, inputs, outputs
    ends = [st.finished_at for st in steps]
    # time when no step is running between the first start and the last end (steps may overlap)
    between = max(0.0, (max(ends) - steps[0].started_at) - _union([(st.started_at, st.finished_at) for st in steps]))
    setup = steps[0].started_at - t_wall               # experiment, parent MLflow run, state file
    teardown = (t_wall + wall) - max(ends)              # closing the runs, the summary
    return {"state": state, "wall_s": wall, "breakdown": {
        "wall_s": wall, "inside_s": inside, "dispatch_s": dispatch, "between_s": between, "setup_s": setup,
        "teardown_s": teardown, "overhead_per_step_s": (wall - inside) / len(steps)}}


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


if __name__ == "__main__":
    main()
