"""The Executor protocol: submit a pipeline somewhere else and follow it there.

Three backends implement it: ``k8s`` (a KubeRay RayJob, :mod:`aimass.orchestrator.executors.kubernetes`),
``ray`` (the Ray Jobs API of an existing cluster, :mod:`aimass.orchestrator.executors.ray_jobs`) and
``api`` (the AI Mass control plane, :mod:`aimass.api.client`). Every one runs the *same* command on
the cluster, built here from an allowlist: ``aimass run <spec file> --run-id <id>``. Nothing a user
writes is ever interpolated into a shell string: the argv is built from validated tokens and each
token is ``shlex``-quoted.

Submissions are remembered in ``$AIMASS_HOME/submissions.json`` (:class:`SubmissionStore`) so that
``aimass runs list`` shows runs submitted to any backend.

Example:
    >>> from aimass.orchestrator.executors.base import get_executor
    >>> ex = get_executor("ray", address="http://127.0.0.1:8265")
    >>> ref = ex.submit(spec, run_id="20250101-120000-abc123")   # doctest: +SKIP
    >>> ex.status(ref).state                                     # doctest: +SKIP
    'RUNNING'
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from aimass.exceptions import ConflictError, InvalidRequestError, NotFoundError

# Run states and the run-id rule have one home, aimass.orchestrator.state; re-exported for the backends.
from aimass.orchestrator.state import (
    CANCELLED,
    FAILED,
    PENDING,
    RUN_ID_PATTERN,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATES,
    UNKNOWN,
    check_run_id,
    new_run_id,
)

if TYPE_CHECKING:  # pragma: no cover
    from aimass.spec import PipelineSpec

__all__ = [
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN", "TERMINAL_STATES",
    "RUN_ID_PATTERN", "ENTRYPOINTS", "EXECUTORS",
    "Executor", "RunStatus", "SubmissionRef", "SubmissionStore",
    "build_entrypoint", "entrypoint_string", "check_run_id", "new_run_id", "get_executor", "executor_for",
]

# Paths we put in an entrypoint: relative or absolute, plain characters, no `..`.
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,254}$|^/[A-Za-z0-9_./-]{1,254}$")

# The only commands a submission may run. Placeholders are whole tokens, never format strings.
ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "run": ("aimass", "run", "{spec}", "--run-id", "{run_id}"),
    "validate": ("aimass", "pipeline", "validate", "{spec}"),
}


def build_entrypoint(action: str = "run", *, spec_path: str, run_id: str) -> list[str]:
    """The argv of an allowlisted command, with validated values in place of the placeholders.

    Raises:
        InvalidRequestError: unknown action, bad run id or an unsafe spec path.
    """
    if action not in ENTRYPOINTS:
        raise InvalidRequestError(f"unknown entrypoint {action!r}", fix=f"Use one of: {', '.join(sorted(ENTRYPOINTS))}.")
    check_run_id(run_id)
    if not _SAFE_PATH_RE.match(spec_path) or ".." in spec_path.split("/"):
        raise InvalidRequestError("unsafe spec path in entrypoint", got=spec_path,
                                  fix="Use a plain relative or absolute path without '..'.")
    values = {"{spec}": spec_path, "{run_id}": run_id}
    return [values.get(tok, tok) for tok in ENTRYPOINTS[action]]


def entrypoint_string(argv: list[str]) -> str:
    """The argv as one shell-safe string (each token quoted), for APIs that take a string."""
    return shlex.join(argv)


# --- status and references --------------------------------------------------------------------
@dataclass
class RunStatus:
    """Where a submitted run stands, in backend-neutral terms.

    ``state`` is one of PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, UNKNOWN; ``details`` holds the
    backend's own words (RayJob ``jobDeploymentStatus``/``jobStatus``, Ray job status, ...).
    """

    state: str
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RunStatus | None":
        if not d:
            return None
        return cls(**{k: d.get(k) for k in ("state", "message", "started_at", "finished_at")},
                   details=dict(d.get("details") or {}))


@dataclass
class SubmissionRef:
    """Everything needed to find a submitted run again. Never holds a secret.

    Attributes:
        run_id: the run id (also the Ray submission id suffix / the RayJob name suffix).
        backend: ``k8s``, ``ray`` or ``api``.
        pipeline: the pipeline's ``metadata.name``.
        submitted_at: seconds since the epoch.
        namespace: Kubernetes namespace (k8s, api).
        name: the backend's own name for it (RayJob name, Ray submission id).
        address: Ray dashboard URL, control-plane URL or kube context.
        owner: who submitted it (the API token's identity on the control plane).
        labels: free-form labels given at submission.
        options: non-secret settings needed to reconnect (a token *file* path, never a token).
        status: the last status seen, if any.
    """

    run_id: str
    backend: str
    pipeline: str
    submitted_at: float = field(default_factory=time.time)
    namespace: str | None = None
    name: str | None = None
    address: str | None = None
    owner: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    status: RunStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.to_dict() if self.status else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SubmissionRef":
        known = {k: d[k] for k in ("run_id", "backend", "pipeline", "submitted_at", "namespace", "name", "address",
                                   "owner") if k in d}
        return cls(**known, labels=dict(d.get("labels") or {}), options=dict(d.get("options") or {}),
                   status=RunStatus.from_dict(d.get("status")))


@runtime_checkable
class Executor(Protocol):
    """What every remote backend implements."""

    backend: ClassVar[str]

    def submit(self, spec: "PipelineSpec", run_id: str, *, labels: dict[str, str] | None = None,
               owner: str | None = None) -> SubmissionRef:
        """Start the pipeline under ``run_id``; returns as soon as the backend accepted it."""
        ...

    def status(self, ref: SubmissionRef) -> RunStatus:
        """The run's current status."""
        ...

    def logs(self, ref: SubmissionRef, follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        """The driver's log lines; with ``follow`` keep yielding until the run ends."""
        ...

    def cancel(self, ref: SubmissionRef) -> RunStatus:
        """Stop the run (idempotent: cancelling a finished run returns its final status)."""
        ...

    def list(self) -> list[SubmissionRef]:
        """Runs this backend knows about (each with ``status`` filled in when that is cheap)."""
        ...

    def get(self, run_id: str) -> SubmissionRef:
        """Look a run up on the backend itself (raises NotFoundError)."""
        ...


# --- registry -----------------------------------------------------------------------------------
EXECUTORS: dict[str, str] = {
    "k8s": "aimass.orchestrator.executors.kubernetes:KubernetesExecutor",
    "ray": "aimass.orchestrator.executors.ray_jobs:RayJobsExecutor",
    "api": "aimass.api.client:ControlPlaneExecutor",
}


def _executor_class(backend: str) -> Any:
    if backend not in EXECUTORS:
        raise InvalidRequestError(f"unknown backend {backend!r}", fix=f"Use one of: {', '.join(sorted(EXECUTORS))}.")
    module, _, attr = EXECUTORS[backend].partition(":")
    return getattr(importlib.import_module(module), attr)


def get_executor(backend: str, **options: Any) -> Executor:
    """An executor for ``backend`` (``k8s``, ``ray``, ``api``) built from keyword options."""
    return _executor_class(backend)(**options)


def executor_for(ref: SubmissionRef) -> Executor:
    """Rebuild the executor that submitted ``ref`` (each class has ``from_ref``)."""
    return _executor_class(ref.backend).from_ref(ref)


# --- the local record of submissions ------------------------------------------------------------
class SubmissionStore:
    """A small JSON file of submissions, safe against concurrent CLI processes.

    Writes are atomic (temp file + rename) under an exclusive ``flock``; the file is private (0600).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            from aimass.settings import Settings

            path = Settings.load().home / "submissions.json"
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - not POSIX
                pass
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text() or "{}")
        except ValueError:
            # A damaged record must not break `aimass runs`: keep a copy, start afresh.
            self.path.replace(self.path.with_suffix(f".corrupt-{int(time.time())}"))
            return {}
        return data.get("submissions", {}) if isinstance(data, dict) else {}

    def _write(self, subs: dict[str, dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".submissions-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "submissions": subs}, f, indent=1, default=str)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def add(self, ref: SubmissionRef) -> None:
        """Record a new submission; a run id already recorded is a conflict."""
        with self._locked():
            subs = self._read()
            if ref.run_id in subs:
                raise ConflictError(f"run {ref.run_id!r} was already submitted", fix="Use another --run-id.")
            subs[ref.run_id] = ref.to_dict()
            self._write(subs)

    def update(self, ref: SubmissionRef) -> None:
        with self._locked():
            subs = self._read()
            subs[ref.run_id] = ref.to_dict()
            self._write(subs)

    def get(self, run_id: str) -> SubmissionRef:
        with self._locked():
            subs = self._read()
        if run_id not in subs:
            raise NotFoundError(f"no submitted run {run_id!r}", fix="See `aimass runs list` for run ids.")
        return SubmissionRef.from_dict(subs[run_id])

    def find(self, run_id: str) -> SubmissionRef | None:
        try:
            return self.get(run_id)
        except NotFoundError:
            return None

    def list(self) -> list[SubmissionRef]:
        """Newest first."""
        with self._locked():
            subs = self._read()
        refs = [SubmissionRef.from_dict(d) for d in subs.values()]
        return sorted(refs, key=lambda r: r.submitted_at, reverse=True)

    def remove(self, run_id: str) -> bool:
        with self._locked():
            subs = self._read()
            if subs.pop(run_id, None) is None:
                return False
            self._write(subs)
            return True
