"""The orchestrator: runs a pipeline's DAG as Ray work with caching, retries and resume."""

from aimass.orchestrator.runner import Orchestrator, RunObserver, run_pipeline
from aimass.orchestrator.state import RunState, StepState, list_runs, load_run

__all__ = ["Orchestrator", "RunObserver", "RunState", "StepState", "list_runs", "load_run", "run_pipeline"]
