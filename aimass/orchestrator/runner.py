"""The run loop: schedule the DAG, cache, retry, persist state, track in MLflow, resume.

Example:
    >>> from aimass.orchestrator import run_pipeline
    >>> state = run_pipeline(load_pipeline("pipelines/quickstart.yaml"))
    >>> state.status
    'SUCCEEDED'
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aimass.exceptions import AimassError, NotFoundError, SpecError, StepError
from aimass.orchestrator import cache
from aimass.orchestrator.state import (
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    RunState,
    StepState,
    check_run_id,
    load_state,
    new_run_id,
    save_state,
)
from aimass.settings import Settings
from aimass.spec import PipelineSpec, parse_pipeline, resolve_inputs
from aimass.steps.base import StepContext, get_step

__all__ = ["run_pipeline", "RunObserver", "Orchestrator"]

log = logging.getLogger(__name__)


class RunObserver:
    """Hooks for progress displays; every method is optional."""

    def run_started(self, state: RunState, resumed: bool) -> None: ...
    def step_started(self, state: RunState, step: StepState) -> None: ...
    def step_finished(self, state: RunState, step: StepState) -> None: ...
    def step_retrying(self, state: RunState, step: StepState, error: AimassError, delay_s: float) -> None: ...
    def run_finished(self, state: RunState) -> None: ...


@dataclass
class _Pending:
    name: str
    not_before: float = 0.0


@dataclass
class _Running:
    name: str
    handle: Any
    started: float
    deadline: float | None


@dataclass
class Orchestrator:
    spec: PipelineSpec
    settings: Settings
    runner: Any = None
    observer: RunObserver = field(default_factory=RunObserver)
    poll_s: float = 0.05

    def __post_init__(self) -> None:
        from aimass.storage import get_store
        from aimass.tracking import Tracker

        self.store = get_store(self.settings.artifact_root, endpoint_url=self.settings.s3_endpoint_url)
        self.tracker = Tracker(self.settings.tracking_uri, self.settings.registry_uri)
        if self.runner is None:
            from aimass.orchestrator.executors import RayStepRunner

            self.runner = RayStepRunner()
        self.edges = {s.name: list(s.depends_on) for s in self.spec.steps}
        self.wiring = {s.name: resolve_inputs(s, self.spec) for s in self.spec.steps}
        self._code_versions: dict[str, str] = {}

    # -- state ---------------------------------------------------------------------------------
    def _spec_sha(self) -> str:
        return hashlib.sha256(json.dumps(self.spec.dump(), sort_keys=True).encode()).hexdigest()

    def _new_state(self, run_id: str | None) -> RunState:
        run_id = check_run_id(run_id) if run_id else new_run_id()
        st = RunState(run_id=run_id, pipeline=self.spec.name, spec=self.spec.dump(), spec_sha256=self._spec_sha(),
                      tracking_uri=self.settings.tracking_uri, artifact_root=self.store.root_uri)
        st.steps = {s.name: StepState(name=s.name, type=s.type) for s in self.spec.steps}
        return st

    def _save(self, state: RunState) -> None:
        save_state(self.store, state)

    # -- cache ---------------------------------------------------------------------------------
    def _code_version(self, step_type: str) -> str:
        if step_type not in self._code_versions:
            self._code_versions[step_type] = get_step(step_type).code_version()
        return self._code_versions[step_type]

    def _cache_key(self, state: RunState, name: str) -> str:
        s = self.spec.step(name)
        inputs = {k: (",".join(f"{state.steps[u].cache_key}:{o}" for u, o in w) if isinstance(w, list)
                      else f"{state.steps[w[0]].cache_key}:{w[1]}") for k, w in self.wiring[name].items()}
        return cache.cache_key(step_type=s.type, config=s.parsed_config.dump(), inputs=inputs,
                               code_version=self._code_version(s.type), seed=self.spec.spec.seed)

    def _copy_cached_results(self, state: RunState, hit: dict[str, Any], rid: str) -> None:
        """A step served from the cache shows the metrics (and links to the plots) of the run it came from."""
        src = hit.get("mlflow_run_id")
        if not src and hit.get("run_id") and hit.get("step"):  # an entry written before runs were recorded in it
            src = self.tracker.find_step_run(state.experiment_id or "", hit["run_id"], hit["step"])
        if not src:
            self.tracker.set_tags(rid, {"aimass.cache_source_mlflow_run": "unknown"})
            return
        try:
            self.tracker.copy_run_results(src, rid, note=f"Served from the cache: the results of step {hit.get('step')!r} "
                                                        f"in run {hit.get('run_id')!r}, which this run reuses.")
        except NotFoundError:  # the source run was deleted from MLflow: the outputs are still valid
            self.tracker.set_tags(rid, {"aimass.cache_source_mlflow_run": f"{src} (deleted)"})

    # -- MLflow ----------------------------------------------------------------------------------
    def _open_parent(self, state: RunState) -> None:
        from aimass.tracking.client import TAG_AIMASS_RUN, TAG_KIND, TAG_PIPELINE

        exp = self.spec.spec.experiment or self.settings.experiment
        state.experiment_id = self.tracker.ensure_experiment(exp, self.settings.mlflow_artifact_location)
        if state.mlflow_run_id:
            self.tracker.reopen_run(state.mlflow_run_id)
            self.tracker.set_tags(state.mlflow_run_id, {"aimass.resumes": state.resumes})
            return
        tags = {TAG_KIND: "pipeline", TAG_PIPELINE: self.spec.name, TAG_AIMASS_RUN: state.run_id,
                **{f"label.{k}": v for k, v in self.spec.metadata.labels.items()}}
        if self.spec.metadata.description:
            tags["mlflow.note.content"] = self.spec.metadata.description
        state.mlflow_run_id = self.tracker.start_run(state.experiment_id, f"{self.spec.name}-{state.run_id}", tags)
        self.tracker.log_params(state.mlflow_run_id, {"pipeline": self.spec.name, "seed": self.spec.spec.seed,
                                                      "steps": ",".join(s.name for s in self.spec.steps)})
        self.tracker.log_text(state.mlflow_run_id, self.spec.to_yaml(), "pipeline.yaml")

    def _child_run(self, state: RunState, st: StepState, extra_tags: dict[str, Any] | None = None) -> str:
        from aimass.tracking.client import TAG_AIMASS_RUN, TAG_KIND, TAG_PIPELINE, TAG_STEP

        if st.mlflow_run_id:
            self.tracker.reopen_run(st.mlflow_run_id)
            return st.mlflow_run_id
        s = self.spec.step(st.name)
        tags = {TAG_KIND: "step", TAG_PIPELINE: self.spec.name, TAG_STEP: st.name, "aimass.step_type": st.type,
                TAG_AIMASS_RUN: state.run_id, **(extra_tags or {})}
        rid = self.tracker.start_run(state.experiment_id, st.name, tags, parent_run_id=state.mlflow_run_id)
        self.tracker.log_params(rid, {f"config.{k}": v for k, v in s.parsed_config.dump().items()})
        st.mlflow_run_id = rid
        return rid

    # -- the loop --------------------------------------------------------------------------------
    def run(self, run_id: str | None = None, resume: bool = False) -> RunState:
        if resume:
            state = load_state(self.store, run_id)  # type: ignore[arg-type]
            if state.spec_sha256 != self._spec_sha():
                raise SpecError("the pipeline spec changed since this run started", got=state.run_id,
                                fix="Resume with the original spec (omit FILE to use the stored one), or start a new run.")
            state.resumes += 1
            state.status = RUNNING
            state.finished_at = None
            state.error = None
            for st in state.steps.values():
                if st.status != SUCCEEDED:
                    # a resumed step gets its full retry budget again: the attempt the crash cut short was
                    # not the step's failure (executions still counts every time its code ran)
                    st.status, st.error, st.attempts = PENDING, None, 0
        else:
            state = self._new_state(run_id)
            state.status = RUNNING
        self._open_parent(state)
        self._save(state)
        self.observer.run_started(state, resume)
        try:
            self._loop(state)
        except BaseException as exc:  # Ctrl-C, SIGTERM: record, then re-raise
            state.status = FAILED
            state.error = {"error": "interrupted", "message": f"{type(exc).__name__}: {exc}"}
            state.finished_at = time.time()
            self._save(state)
            self._end_mlflow(state, "KILLED")
            raise
        state.finished_at = time.time()
        self._save(state)
        self._end_mlflow(state, "FINISHED" if state.status == SUCCEEDED else "FAILED")
        self.observer.run_finished(state)
        return state

    def _end_mlflow(self, state: RunState, status: str) -> None:
        try:
            summary = {f"{n}.duration_s": s.duration_s for n, s in state.steps.items() if s.duration_s is not None}
            summary["pipeline.duration_s"] = (state.finished_at or time.time()) - state.started_at
            self.tracker.log_metrics(state.mlflow_run_id, summary)
            self.tracker.set_tags(state.mlflow_run_id, {"aimass.status": state.status,
                                                        "aimass.cached_steps": ",".join(n for n, s in state.steps.items() if s.cached)})
            self.tracker.end_run(state.mlflow_run_id, status)
        except AimassError as exc:
            log.warning("could not close the MLflow run: %s", exc)

    def _ready(self, state: RunState, name: str) -> bool:
        return all(state.steps[d].status == SUCCEEDED for d in self.edges[name])

    def _loop(self, state: RunState) -> None:
        max_parallel = self.spec.spec.max_parallel_steps
        pending: dict[str, _Pending] = {n: _Pending(n) for n, st in state.steps.items() if st.status == PENDING}
        running: dict[Any, _Running] = {}
        failed = False
        while pending or running:
            now = time.time()
            if not failed:
                for name in sorted(pending, key=lambda n: list(self.edges).index(n)):
                    if len(running) >= max_parallel:
                        break
                    p = pending[name]
                    if p.not_before > now or not self._ready(state, name):
                        continue
                    del pending[name]
                    handle = self._start(state, name)
                    if handle is not None:
                        s = self.spec.step(name)
                        running[handle] = _Running(name, handle, now, now + s.timeout_s if s.timeout_s else None)
            elif pending and not running:
                for name in pending:
                    state.steps[name].status = SKIPPED
                pending.clear()
                self._save(state)
                break
            if not running:
                if pending and not any(self._ready(state, n) for n in pending) and not failed:
                    waits = [p.not_before for p in pending.values() if p.not_before > now]
                    if not waits:
                        raise StepError("no step can run: the graph is stuck", got=sorted(pending))
                time.sleep(self.poll_s)
                continue
            done = self.runner.wait(list(running), self.poll_s if pending else 1.0)
            for h in done:
                r = running.pop(h)
                if not self._finish(state, r, pending):
                    failed = True
            now = time.time()
            for h, r in list(running.items()):
                if r.deadline and now > r.deadline:
                    self.runner.cancel(h)
                    running.pop(h)
                    err = StepError(f"step {r.name!r} timed out after {self.spec.step(r.name).timeout_s:g}s", retryable=True,
                                    fix="Raise timeoutS or give the step more resources.")
                    if not self._fail_or_retry(state, r.name, err, pending):
                        failed = True
        state.status = SUCCEEDED if all(s.status == SUCCEEDED for s in state.steps.values()) else FAILED
        if state.status == FAILED and state.error is None:
            bad = [n for n, s in state.steps.items() if s.status == FAILED]
            state.error = {"error": "step_failed", "message": f"step(s) failed: {', '.join(bad)}"}

    def _ctx(self, state: RunState, st: StepState) -> StepContext:
        s = self.spec.step(st.name)
        inputs = {k: ([state.steps[u].outputs.get(o) for u, o in w] if isinstance(w, list) else state.steps[w[0]].outputs.get(w[1]))
                  for k, w in self.wiring[st.name].items()}
        return StepContext(
            run_id=state.run_id, pipeline=self.spec.name, step_name=st.name, step_type=st.type, inputs=inputs,
            artifact_root=self.store.root_uri, prefix=f"runs/{state.run_id}/steps/{st.name}",
            tracking_uri=self.settings.tracking_uri, registry_uri=self.settings.registry_uri,
            experiment_id=state.experiment_id or "", mlflow_run_id=st.mlflow_run_id or "", seed=self.spec.spec.seed,
            attempt=st.attempts, settings={"s3_endpoint_url": self.settings.s3_endpoint_url,
                                           "serve_http_port": self.settings.serve_http_port,
                                           "serve_token_file": self.settings.serve_token_file,
                                           "home": str(self.settings.home)},
            resources=s.resources.dump(),
        )

    def _start(self, state: RunState, name: str) -> Any:
        st = state.steps[name]
        s = self.spec.step(name)
        st.cache_key = self._cache_key(state, name)
        st.started_at = time.time()
        st.status = RUNNING
        use_cache = s.cache and get_step(s.type).cacheable
        if use_cache and (hit := cache.lookup(self.store, st.cache_key)) is not None:
            st.outputs, st.cached, st.cache_source_run = hit["outputs"], True, hit.get("run_id")
            st.status, st.finished_at = SUCCEEDED, time.time()
            st.duration_s = st.finished_at - st.started_at
            rid = self._child_run(state, st, {"aimass.cached": "true", "aimass.cache_source_run": hit.get("run_id", "")})
            self._copy_cached_results(state, hit, rid)
            self.tracker.end_run(rid, "FINISHED")
            self._save(state)
            self.observer.step_finished(state, st)
            return None
        st.cached = False
        st.attempts += 1
        st.executions += 1
        self._child_run(state, st)
        self.tracker.set_tags(st.mlflow_run_id, {"aimass.attempt": st.attempts, "aimass.status": RUNNING})
        self._save(state)
        self.observer.step_started(state, st)
        step = get_step(s.type)
        return self.runner.submit(s.type, s.parsed_config.dump(), self._ctx(state, st), step.ray_options(s.parsed_config, s.resources.dump()))

    def _finish(self, state: RunState, r: _Running, pending: dict[str, _Pending]) -> bool:
        st = state.steps[r.name]
        try:
            result = self.runner.result(r.handle)
        except AimassError as exc:
            return self._fail_or_retry(state, r.name, exc, pending)
        st.outputs = json.loads(json.dumps(result["outputs"], default=str))
        st.run_s = result.get("run_s")
        st.status, st.finished_at = SUCCEEDED, time.time()
        st.duration_s = st.finished_at - (st.started_at or r.started)
        st.error = None
        if self.spec.step(r.name).cache and get_step(st.type).cacheable:
            cache.store_entry(self.store, st.cache_key, outputs=st.outputs, run_id=state.run_id, step=r.name,
                              mlflow_run_id=st.mlflow_run_id)
        self.tracker.set_tags(st.mlflow_run_id, {"aimass.status": SUCCEEDED, "aimass.cache_key": st.cache_key})
        self.tracker.log_metrics(st.mlflow_run_id, {"step_duration_s": st.duration_s, "step_run_s": st.run_s or 0.0})
        self.tracker.end_run(st.mlflow_run_id, "FINISHED")
        self._save(state)
        self.observer.step_finished(state, st)
        return True

    def _fail_or_retry(self, state: RunState, name: str, exc: AimassError, pending: dict[str, _Pending]) -> bool:
        st = state.steps[name]
        policy = self.spec.step(name).retries
        if exc.retryable and st.attempts < policy.max_attempts:
            delay = policy.delay_s(st.attempts + 1)
            pending[name] = _Pending(name, time.time() + delay)
            st.status = PENDING
            st.error = exc.to_dict()
            self.tracker.set_tags(st.mlflow_run_id, {"aimass.last_error": str(exc)[:1000]})
            self._save(state)
            self.observer.step_retrying(state, st, exc, delay)
            return True
        st.status, st.finished_at = FAILED, time.time()
        st.duration_s = st.finished_at - (st.started_at or st.finished_at)
        st.error = exc.to_dict()
        state.error = {"error": exc.code, "message": f"step {name!r} failed: {exc}", "step": name}
        try:
            self.tracker.set_tags(st.mlflow_run_id, {"aimass.status": FAILED, "aimass.error": str(exc)[:4000]})
            self.tracker.end_run(st.mlflow_run_id, "FAILED")
        except AimassError:
            pass
        self._save(state)
        self.observer.step_finished(state, st)
        return False


def run_pipeline(spec: PipelineSpec | str | dict, settings: Settings | None = None, *, run_id: str | None = None,
                 resume: bool = False, runner: Any = None, observer: RunObserver | None = None,
                 connect: bool = True) -> RunState:
    """Run (or resume) a pipeline on the embedded default or the configured cluster.

    Args:
        spec: a PipelineSpec, a path to YAML, or a dict.
        settings: where to track and store; ``Settings.load()`` by default.
        run_id: a run id to use (new run) or to resume (with ``resume=True``).
        runner: a step runner; Ray tasks on the connected cluster by default.
        connect: connect to Ray (starting the persistent local cluster if needed).
    """
    from pathlib import Path

    if isinstance(spec, (str, Path)):
        from aimass.spec import load_pipeline

        spec = load_pipeline(spec)
    elif isinstance(spec, dict):
        spec = parse_pipeline(spec)
    settings = settings or Settings.load()
    settings.ensure_dirs()
    if runner is None and connect:
        from aimass.orchestrator.ray_runtime import ensure_ray

        ensure_ray(settings.ray_address, home=settings.home)
    orch = Orchestrator(spec, settings, runner=runner, observer=observer or RunObserver())
    return orch.run(run_id=run_id, resume=resume)
