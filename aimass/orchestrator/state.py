"""Run and step state, persisted as JSON in the artifact store after every change.

The state file is the source of truth for ``--resume``: a step marked SUCCEEDED is never run again
in the same run; anything else is run (again). Writes are atomic (local) or whole-object (S3).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from aimass.exceptions import InvalidRequestError

__all__ = ["RunState", "StepState", "new_run_id", "check_run_id", "save_state", "load_state", "list_runs", "load_run",
           "STATE_FILE", "RUN_ID_PATTERN", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED", "UNKNOWN",
           "TERMINAL", "TERMINAL_STATES"]

STATE_FILE = "state.json"

# --- the one vocabulary of states, for runs, steps and submissions to a backend ----------------
PENDING, RUNNING, SUCCEEDED, FAILED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED"
SKIPPED = "SKIPPED"  # a step whose upstream failed
CANCELLED = "CANCELLED"  # a submitted run someone cancelled
UNKNOWN = "UNKNOWN"  # a backend that cannot say (e.g. unreachable)
TERMINAL = frozenset({SUCCEEDED, FAILED, SKIPPED})  # a step in one of these is done
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})  # a run (or submission) in one of these is done

# --- the one run-id rule and generator ---------------------------------------------------------
# A DNS-1123 label of at most 40 characters: run ids are storage keys, Kubernetes object names
# ("aimass-<run id>" must fit KubeRay's 47-character RayJob name limit) and Ray submission ids.
RUN_ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)


def new_run_id() -> str:
    """A fresh run id, ``YYYYmmdd-HHMMSS-xxxxxx`` (it sorts by start time and matches :data:`RUN_ID_PATTERN`)."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def check_run_id(run_id: str) -> str:
    """Validate a run id (lowercase letters, digits and '-', at most 40 characters); returns it."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise InvalidRequestError(
            "invalid run id", got=run_id,
            fix="Use at most 40 lowercase letters, digits and '-', starting and ending with a letter or digit "
                "(see `aimass runs list`).")
    return run_id


@dataclass
class StepState:
    name: str
    type: str
    status: str = PENDING
    cached: bool = False
    cache_key: str | None = None
    attempts: int = 0
    executions: int = 0  # times the step's code actually ran (across resumes); cached hits don't count
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    run_s: float | None = None  # time inside the step's own code (duration_s - run_s = orchestration overhead)
    outputs: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    error: dict[str, Any] | None = None
    cache_source_run: str | None = None


@dataclass
class RunState:
    run_id: str
    pipeline: str
    spec: dict[str, Any]
    spec_sha256: str
    status: str = PENDING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    experiment_id: str | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    artifact_root: str | None = None
    resumes: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float | None:
        return (self.finished_at - self.started_at) if self.finished_at else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunState":
        steps = {k: StepState(**v) for k, v in d.get("steps", {}).items()}
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "steps"}
        return cls(steps=steps, **known)


def state_key(run_id: str) -> str:
    return f"runs/{run_id}/{STATE_FILE}"


def save_state(store, state: RunState) -> None:
    store.put_bytes(state_key(state.run_id), json.dumps(state.to_dict(), indent=1, default=str).encode())


def load_state(store, run_id: str) -> RunState:
    from aimass.exceptions import NotFoundError

    check_run_id(run_id)
    key = state_key(run_id)
    if not store.exists(key):
        raise NotFoundError(f"no run {run_id!r} in {store.root_uri}", fix="See `aimass runs list` for run ids.")
    return RunState.from_dict(json.loads(store.get_bytes(key)))


def list_runs(settings=None, limit: int = 50) -> list[RunState]:
    """Local runs, newest first."""
    from aimass.settings import Settings
    from aimass.storage import get_store

    settings = settings or Settings.load()
    store = get_store(settings.artifact_root, endpoint_url=settings.s3_endpoint_url)
    runs = []
    for key in store.list("runs"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == STATE_FILE:
            try:
                runs.append(RunState.from_dict(json.loads(store.get_bytes(key))))
            except (ValueError, TypeError):
                continue
    runs.sort(key=lambda r: r.started_at, reverse=True)
    return runs[:limit]


def load_run(settings, run_id: str) -> RunState:
    from aimass.settings import Settings
    from aimass.storage import get_store

    settings = settings or Settings.load()
    return load_state(get_store(settings.artifact_root, endpoint_url=settings.s3_endpoint_url), run_id)
