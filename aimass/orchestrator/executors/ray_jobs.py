"""Run a pipeline on an existing Ray cluster through the Ray Jobs API.

The spec is written to ``pipeline.yaml`` in a fresh temporary directory that becomes the job's
``runtime_env.working_dir``: Ray uploads it (content-addressed, through the dashboard) and the
driver starts in it. The entrypoint is the allowlisted ``aimass run pipeline.yaml --run-id <id>``;
the submission id is ``aimass-<run id>``, and the run's identity travels in the job metadata, so
``list()`` finds aimass runs among the cluster's jobs.

Ray token authentication: the token is sent as ``Authorization: Bearer <token>``. It comes from
``token``/``token_file`` given here, else ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or Ray's
default ``~/.ray/auth_token``. A token is never written to the submission record (only a path).

Example:
    >>> ex = RayJobsExecutor("http://127.0.0.1:8265")
    >>> ref = ex.submit(load_pipeline("pipelines/quickstart.yaml"), run_id=new_run_id())  # doctest: +SKIP
    >>> for line in ex.logs(ref, follow=True): print(line)                                # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from aimass.exceptions import AimassError, AuthError, ConflictError, ExecutorError, InvalidRequestError, NotFoundError
from aimass.orchestrator.executors.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    RunStatus,
    SubmissionRef,
    build_entrypoint,
    check_run_id,
    entrypoint_string,
)

if TYPE_CHECKING:  # pragma: no cover
    from aimass.spec import PipelineSpec

__all__ = ["RayJobsExecutor", "resolve_ray_token", "submission_id", "FORWARDED_ENV"]

META_RUN_ID = "aimass.io/run-id"
META_PIPELINE = "aimass.io/pipeline"
META_OWNER = "aimass.io/owner"
META_LABEL_PREFIX = "label."
SPEC_FILE = "pipeline.yaml"
# Settings a run needs on the cluster; forwarded only when set here and only these (never secrets).
FORWARDED_ENV = ("AIMASS_TRACKING_URI", "AIMASS_REGISTRY_URI", "AIMASS_ARTIFACT_ROOT", "AIMASS_EXPERIMENT",
                 "AIMASS_S3_ENDPOINT_URL", "AIMASS_MLFLOW_ARTIFACT_LOCATION")
_STATES = {"PENDING": PENDING, "RUNNING": RUNNING, "STOPPED": CANCELLED, "SUCCEEDED": SUCCEEDED, "FAILED": FAILED}


def submission_id(run_id: str) -> str:
    return f"aimass-{check_run_id(run_id)}"


def resolve_ray_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """The Ray auth token, from the first source that has one (see the module docs)."""
    if token:
        return token.strip()
    for path in (token_file, os.environ.get("RAY_AUTH_TOKEN_PATH")):
        if path:
            p = Path(path).expanduser()
            try:
                value = p.read_text().strip()
            except OSError as exc:
                raise AuthError("cannot read the Ray auth token file", got=str(p),
                                fix="Check the path and its permissions.") from exc
            if not value:
                raise AuthError("the Ray auth token file is empty", got=str(p))
            return value
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        value = default.read_text().strip()
        return value or None
    return None


def _default_address() -> str | None:
    for env in ("AIMASS_RAY_DASHBOARD", "RAY_API_SERVER_ADDRESS"):
        if os.environ.get(env):
            return os.environ[env]
    ra = os.environ.get("RAY_ADDRESS", "")
    if ra.startswith(("http://", "https://")):
        return ra
    try:
        import json

        from aimass.settings import aimass_home

        info = json.loads((aimass_home() / "ray-cluster.json").read_text())
        return info.get("dashboard")
    except (OSError, ValueError, ImportError):
        return None


class RayJobsExecutor:
    """Submit to, follow and stop runs on a Ray cluster's Jobs API.

    Args:
        address: the dashboard URL (``http://ray-head:8265``); default ``AIMASS_RAY_DASHBOARD``,
            an ``http(s)://`` ``RAY_ADDRESS``, or the local cluster ``aimass`` started.
        token / token_file: Ray auth token (see :func:`resolve_ray_token`).
        action: the allowlisted entrypoint (``run``; ``validate`` checks the spec on the cluster).
        env: extra non-secret environment for the run (default: the :data:`FORWARDED_ENV` that are set).
        entrypoint_num_cpus: CPUs reserved for the driver.
        client: an injected ``JobSubmissionClient`` (tests).
        poll_interval_s / sleep: for ``logs(follow=True)`` and ``cancel``.
    """

    backend: ClassVar[str] = "ray"

    def __init__(self, address: str | None = None, *, token: str | None = None, token_file: str | None = None,
                 action: str = "run", env: dict[str, str] | None = None, entrypoint_num_cpus: float | None = None,
                 client: Any = None, poll_interval_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.address = (address or _default_address() or "").rstrip("/")
        if not self.address:
            raise InvalidRequestError("no Ray cluster address", fix="Pass --address http://<ray-head>:8265 or set AIMASS_RAY_DASHBOARD.")
        if not self.address.startswith(("http://", "https://")):
            raise InvalidRequestError("the Ray Jobs API address must be an http(s) URL of the dashboard", got=self.address,
                                      fix="Use e.g. http://127.0.0.1:8265 (the dashboard port, not the GCS port).")
        self.token_file = str(token_file) if token_file else None
        self._token = resolve_ray_token(token, token_file)
        self.action = action
        if env is None:
            env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
        for k in env:
            if not re.match(r"^[A-Z_][A-Z0-9_]*$", k) or re.search(r"TOKEN|SECRET|PASSWORD|KEY", k):
                raise InvalidRequestError(f"environment variable {k!r} cannot be forwarded",
                                          fix="Only plain settings may be forwarded; give the cluster its secrets itself.")
        self.env = dict(env)
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self._client = client
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep

    @classmethod
    def from_ref(cls, ref: SubmissionRef) -> "RayJobsExecutor":
        return cls(ref.address, token_file=ref.options.get("token_file"))

    # --- plumbing -------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._client = self._guard(lambda: JobSubmissionClient(self.address, headers=headers), "connect")
        return self._client

    def _guard(self, fn: Callable[[], Any], what: str, job: str | None = None) -> Any:
        try:
            return fn()
        except AimassError:
            raise
        except ConnectionError as exc:
            raise ExecutorError(f"cannot reach the Ray Jobs API at {self.address}", got=str(exc)[:300], retryable=True,
                                fix="Is the cluster up and the dashboard port right? Inside Kubernetes use the head service "
                                    "(http://<cluster>-head-svc:8265); from outside, `kubectl port-forward` it.") from None
        except Exception as exc:  # Ray raises RuntimeError / AuthenticationError with the HTTP status in the text
            text = str(exc)
            name = type(exc).__name__
            if name == "AuthenticationError" or "status code 401" in text or "status code 403" in text:
                raise AuthError("the Ray cluster refused our token", got=text.splitlines()[0][:300],
                                fix="Pass the cluster's token with --token-file, or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH.") from None
            if "status code 404" in text or "does not exist" in text:
                raise NotFoundError(f"no Ray job {job!r} on {self.address}" if job else f"not found on {self.address}",
                                    fix="See `aimass runs list`.") from None
            if "already exists" in text:
                raise ConflictError(f"Ray job {job!r} already exists on {self.address}", fix="Use another --run-id.") from None
            if "requests" in type(exc).__module__:
                raise ExecutorError(f"cannot reach the Ray Jobs API at {self.address}", got=text[:300], retryable=True,
                                    fix="Check the address and that the dashboard is reachable.") from None
            raise ExecutorError(f"Ray Jobs API error during {what}", got=text[:500], retryable=True) from None

    # --- the protocol ---------------------------------------------------------------------------
    def submit(self, spec: "PipelineSpec", run_id: str, *, labels: dict[str, str] | None = None,
               owner: str | None = None) -> SubmissionRef:
        sid = submission_id(run_id)
        argv = build_entrypoint(self.action, spec_path=SPEC_FILE, run_id=run_id)
        metadata = {META_RUN_ID: run_id, META_PIPELINE: spec.name}
        if owner:
            metadata[META_OWNER] = owner
        for k, v in (labels or {}).items():
            metadata[META_LABEL_PREFIX + str(k)] = str(v)
        with tempfile.TemporaryDirectory(prefix="aimass-submit-") as tmp:
            (Path(tmp) / SPEC_FILE).write_text(spec.to_yaml())
            runtime_env = {"working_dir": tmp,
                           "env_vars": {"AIMASS_RUN_ID": run_id, "AIMASS_SUBMITTED_BY": "ray", **self.env}}
            kwargs: dict[str, Any] = {"entrypoint": entrypoint_string(argv), "submission_id": sid,
                                      "runtime_env": runtime_env, "metadata": metadata}
            if self.entrypoint_num_cpus is not None:
                kwargs["entrypoint_num_cpus"] = self.entrypoint_num_cpus
            self._guard(lambda: self.client.submit_job(**kwargs), "submit", sid)
        options = {"token_file": self.token_file} if self.token_file else {}
        return SubmissionRef(run_id=run_id, backend=self.backend, pipeline=spec.name, address=self.address, name=sid,
                             owner=owner, labels=dict(labels or {}), options=options, status=RunStatus(PENDING))

    def _info(self, ref_or_id: SubmissionRef | str) -> Any:
        if isinstance(ref_or_id, SubmissionRef):
            sid = ref_or_id.name or submission_id(ref_or_id.run_id)
        else:
            sid = ref_or_id
        return self._guard(lambda: self.client.get_job_info(sid), "status", sid)

    @staticmethod
    def _status_of(info: Any) -> RunStatus:
        raw = str(getattr(info.status, "value", info.status))
        def secs(ms: Any) -> float | None:
            return ms / 1000.0 if ms else None
        return RunStatus(state=_STATES.get(raw, UNKNOWN), message=info.message or None, started_at=secs(info.start_time),
                         finished_at=secs(info.end_time),
                         details={"jobStatus": raw, "jobId": info.job_id, "submissionId": info.submission_id,
                                  "errorType": getattr(info, "error_type", None)})

    def status(self, ref: SubmissionRef) -> RunStatus:
        return self._status_of(self._info(ref))

    def _ref_of(self, info: Any) -> SubmissionRef | None:
        meta = info.metadata or {}
        rid = meta.get(META_RUN_ID)
        if not rid:
            return None
        labels = {k[len(META_LABEL_PREFIX):]: v for k, v in meta.items() if k.startswith(META_LABEL_PREFIX)}
        return SubmissionRef(run_id=rid, backend=self.backend, pipeline=meta.get(META_PIPELINE, ""),
                             submitted_at=(info.start_time or 0) / 1000.0, address=self.address, name=info.submission_id,
                             owner=meta.get(META_OWNER), labels=labels,
                             options={"token_file": self.token_file} if self.token_file else {}, status=self._status_of(info))

    def get(self, run_id: str) -> SubmissionRef:
        ref = self._ref_of(self._info(submission_id(run_id)))
        if ref is None:
            raise NotFoundError(f"Ray job {submission_id(run_id)!r} is not an aimass run")
        return ref

    def list(self) -> list[SubmissionRef]:
        jobs = self._guard(lambda: self.client.list_jobs(), "list")
        refs = [r for r in (self._ref_of(j) for j in jobs) if r is not None]
        return sorted(refs, key=lambda r: r.submitted_at, reverse=True)

    def logs(self, ref: SubmissionRef, follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        sid = ref.name or submission_id(ref.run_id)
        text = self._guard(lambda: self.client.get_job_logs(sid), "logs", sid) or ""
        lines = text.splitlines()
        if tail_lines:
            lines = lines[-tail_lines:]
        yield from lines
        if not follow:
            return
        # Poll rather than tail_job_logs (an async websocket): simpler, and survives reconnects.
        seen = len(text)
        while True:
            done = self.status(ref).terminal
            text = self._guard(lambda: self.client.get_job_logs(sid), "logs", sid) or ""
            if len(text) > seen:
                chunk, seen = text[seen:], len(text)
                # A partial last line is completed by the next chunk; Ray flushes whole lines in practice.
                yield from chunk.splitlines()
            if done:
                return
            self._sleep(self.poll_interval_s)

    def cancel(self, ref: SubmissionRef, *, wait_s: float = 30.0) -> RunStatus:
        sid = ref.name or submission_id(ref.run_id)
        status = self.status(ref)
        if status.terminal:
            return status
        self._guard(lambda: self.client.stop_job(sid), "cancel", sid)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            status = self.status(ref)
            if status.terminal:
                return status
            self._sleep(min(self.poll_interval_s, 0.5))
        return RunStatus(CANCELLED if status.state == CANCELLED else status.state,
                         message="stop requested; the job has not exited yet", details=status.details)

    def ready(self) -> None:
        """Raise unless the Jobs API answers (and accepts our token)."""
        self._guard(lambda: self.client.list_jobs(), "list")
