"""A thin, retrying wrapper over MlflowClient with the calls AI Mass needs."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aimass.exceptions import NotFoundError, TrackingError

__all__ = ["Tracker", "RunInfo", "flatten_params", "TAG_PIPELINE", "TAG_STEP", "TAG_KIND", "TAG_AIMASS_RUN",
           "EXPERIMENT_KIND_TAG", "EXPERIMENT_KIND", "run_link"]

log = logging.getLogger(__name__)
T = TypeVar("T")

TAG_KIND = "aimass.kind"  # pipeline | step | trial
TAG_PIPELINE = "aimass.pipeline"
TAG_STEP = "aimass.step"
TAG_AIMASS_RUN = "aimass.run_id"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"
# MLflow 3's UI opens an experiment in the view its kind names; without the tag it guesses, and an
# experiment with no traces may open in the GenAI overview. AI Mass trains models: the training view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A cached step's own timings are its own; everything else it reports is copied from the source run.
_TIMING_METRICS = ("step_duration_s", "step_run_s")


def run_link(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A link to a run (or one of its artifacts) inside the MLflow UI, relative to the UI's own address."""
    base = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{base}/artifacts/{artifact}" if artifact else base


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": "0.1"}; values capped at MLflow's 6000 chars."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key + "."))
        else:
            s = json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
            out[key] = s[:6000]
    return out


@dataclass
class RunInfo:
    run_id: str
    name: str
    status: str
    start_time: int | None
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    experiment_id: str


class Tracker:
    """Tracking + registry access for one MLflow deployment.

    Args:
        tracking_uri: ``sqlite:///...``, ``postgresql://...``, ``http(s)://...``.
        registry_uri: defaults to ``tracking_uri``.
        retry_for_s: how long to keep retrying a failing call before raising :class:`TrackingError`.
    """

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, retry_for_s: float = 60.0) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.retry_for_s = retry_for_s
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from mlflow.exceptions import MlflowException, RestException

        deadline = time.monotonic() + self.retry_for_s
        delay = 0.5
        while True:
            try:
                return fn()
            except RestException as e:
                code = getattr(e, "error_code", "")
                if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise NotFoundError(f"MLflow: {what}: {e.message}") from e
                if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"):
                    raise TrackingError(f"MLflow refused to {what}: {e.message}") from e
                err = e
            except MlflowException as e:
                code = getattr(e, "error_code", "")
                if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise NotFoundError(f"MLflow: {what}: {e.message}") from e
                if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"):
                    raise TrackingError(f"MLflow refused to {what}: {e.message}") from e
                err = e
            except (ConnectionError, OSError) as e:
                err = e
            if time.monotonic() + delay > deadline:
                raise TrackingError(f"MLflow unreachable while trying to {what}: {err}", retryable=True,
                                    fix=f"Check the tracking server at {self.tracking_uri}.") from err
            log.warning("MLflow call %s failed (%s); retrying in %.1fs", what, err, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)

    # -- experiments and runs ----------------------------------------------------------------
    def ensure_experiment(self, name: str, artifact_location: str | None = None) -> str:
        """The id of experiment ``name``, created (or restored) when needed.

        The experiment is marked as a model-training one (``mlflow.experimentKind``) so MLflow 3's UI
        opens it in its training view; a kind someone already chose in the UI is kept.
        """
        def go() -> str:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(exp.experiment_id)
                if not (exp.tags or {}).get(EXPERIMENT_KIND_TAG):
                    self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                return exp.experiment_id
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except Exception:
                exp = self.client.get_experiment_by_name(name)  # created concurrently
                if exp is None:
                    raise
                return exp.experiment_id

        return self._call(f"open experiment {name!r}", go)

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        """The tags of an experiment."""
        return dict(self._call("get experiment", lambda: self.client.get_experiment(experiment_id)).tags or {})

    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> str:
        t = {RUN_NAME: name, **(tags or {})}
        if parent_run_id:
            t[PARENT] = parent_run_id
        run = self._call(f"start run {name!r}", lambda: self.client.create_run(experiment_id, tags=t, run_name=name))
        return run.info.run_id

    def reopen_run(self, run_id: str) -> None:
        self._call("reopen run", lambda: self.client.update_run(run_id, status="RUNNING"))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("end run", lambda: self.client.set_terminated(run_id, status=status))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        if not flat:
            return
        existing = self.get_run(run_id).params
        todo = [Param(k, v) for k, v in flat.items() if existing.get(k) != v and k not in existing]
        for i in range(0, len(todo), 100):
            self._call("log params", lambda b=todo[i:i + 100]: self.client.log_batch(run_id, params=b))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None and _finite(v)]
        for i in range(0, len(ms), 500):
            self._call("log metrics", lambda b=ms[i:i + 500]: self.client.log_batch(run_id, metrics=b))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        ts = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        if ts:
            self._call("set tags", lambda: self.client.log_batch(run_id, tags=ts))

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(local_path)
        fn = self.client.log_artifacts if p.is_dir() else self.client.log_artifact
        self._call("log artifact", lambda: fn(run_id, str(p), artifact_path))

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        self._call("log figure", lambda: self.client.log_figure(run_id, figure, artifact_file))

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self._call("log dict", lambda: self.client.log_dict(run_id, data, artifact_file))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._call("log text", lambda: self.client.log_text(run_id, text, artifact_file))

    def log_table(self, run_id: str, data: Mapping[str, list], artifact_file: str) -> None:
        """A table (column name -> values) shown in the MLflow UI's artifact view (``artifact_file`` ends in .json)."""
        self._call("log table", lambda: self.client.log_table(run_id, dict(data), artifact_file))

    def log_dataset_input(self, run_id: str, *, name: str, digest: str, source: str, source_type: str = "aimass",
                          context: str = "training", schema: Mapping[str, Any] | None = None,
                          profile: Mapping[str, Any] | None = None) -> None:
        """Record a dataset as an input of the run (the MLflow UI's Dataset column): name, source and digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest[:36], source_type=source_type, source=json.dumps({"uri": source}),
                     schema=json.dumps(schema) if schema is not None else None,
                     profile=json.dumps(profile) if profile is not None else None)
        inp = DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])
        self._call("log dataset input", lambda: self.client.log_inputs(run_id, datasets=[inp]))

    def get_run(self, run_id: str) -> RunInfo:
        r = self._call("get run", lambda: self.client.get_run(run_id))
        return _info(r)

    def child_runs(self, parent_run_id: str, experiment_id: str) -> list[RunInfo]:
        runs = self._call("search runs", lambda: self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_run_id}'", max_results=1000))
        return [_info(r) for r in runs]

    def search_runs(self, experiment_id: str, filter_string: str = "", max_results: int = 50) -> list[RunInfo]:
        runs = self._call("search runs", lambda: self.client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=max_results, order_by=["attributes.start_time DESC"]))
        return [_info(r) for r in runs]

    def get_metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        hist = self._call("get metric history", lambda: self.client.get_metric_history(run_id, key))
        return [(m.step, m.value) for m in hist]

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Paths of the files (not folders) of a run's artifacts under ``path``, one level deep."""
        infos = self._call("list artifacts", lambda: self.client.list_artifacts(run_id, path))
        return [i.path for i in infos if not i.is_dir]

    def read_text(self, run_id: str, path: str) -> str | None:
        """A small text artifact of a run, or None when the run has none at ``path``."""
        folder = path.rsplit("/", 1)[0] if "/" in path else None
        if path not in self.list_artifacts(run_id, folder):  # backends differ in how a missing file fails
            return None

        def go() -> str:
            with tempfile.TemporaryDirectory(prefix="aimass-art-") as d:
                return Path(self.client.download_artifacts(run_id, path, d)).read_text()

        return self._call(f"read artifact {path}", go)

    def find_step_run(self, experiment_id: str, aimass_run_id: str, step: str) -> str | None:
        """The MLflow run id of step ``step`` in the AI Mass run ``aimass_run_id``, newest first."""
        flt = f"tags.`{TAG_AIMASS_RUN}` = '{_quote(aimass_run_id)}' and tags.`{TAG_STEP}` = '{_quote(step)}'"
        runs = self.search_runs(experiment_id, flt, max_results=5)
        return runs[0].run_id if runs else None

    def copy_run_results(self, src_run_id: str, dst_run_id: str, note: str = "") -> dict[str, Any]:
        """Give ``dst_run_id`` the results of ``src_run_id``: every metric with its history, and a note
        linking to the source run and its plots (the plots stay where they are: a link, not a copy).

        Used for a step served from the cache, so the newest run of a pipeline shows its metrics.
        Returns ``{"metrics": [...copied keys], "plots": [...artifact paths]}``.

        Raises:
            NotFoundError: the source run no longer exists.
        """
        from mlflow.entities import Metric

        src = self.get_run(src_run_id)
        metrics: list[Metric] = []
        for key in sorted(src.metrics):
            if key in _TIMING_METRICS:
                continue
            hist = self._call("get metric history", lambda k=key: self.client.get_metric_history(src_run_id, k))
            metrics.extend(Metric(m.key, m.value, m.timestamp, m.step) for m in hist[:_MAX_HISTORY])
        for i in range(0, len(metrics), 500):
            self._call("log metrics", lambda b=metrics[i:i + 500]: self.client.log_batch(dst_run_id, metrics=b))
        plots = [p for p in self.list_artifacts(src_run_id, "plots") if p.lower().endswith((".png", ".svg", ".jpg", ".html"))]
        lines = [note or "Served from the cache: these are the results of an earlier run of this step.",
                 "", f"- source run: [{src.name or src_run_id}]({run_link(src.experiment_id, src_run_id)})"]
        lines += [f"- plot: [{p.rsplit('/', 1)[-1]}]({run_link(src.experiment_id, src_run_id, p)})" for p in plots]
        self.set_tags(dst_run_id, {"aimass.cache_source_mlflow_run": src_run_id, NOTE: "\n".join(lines),
                                   **{f"aimass.plot.{p.rsplit('/', 1)[-1]}": f"runs:/{src_run_id}/{p}" for p in plots}})
        return {"metrics": sorted({m.key for m in metrics}), "plots": plots}

    # -- models and registry -----------------------------------------------------------------
    def log_model(self, run_id: str, model_dir: str | Path, input_shape: list[int], num_classes: int,
                  input_example: Any = None, name: str = "model", input_name: str = "input",
                  output_name: str = "probabilities") -> str:
        """Log a zoo model (card + weights, no pickles) as an MLflow pyfunc; returns its model URI.

        The pyfunc is a "model from code" (``aimass/tracking/pyfunc_model.py``): MLflow stores the
        source file, not a pickled object, and the weights load with safetensors / ``weights_only``.
        """
        import mlflow
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        sig = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape), name=input_name)]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), name=output_name)]),
        )
        code = str(Path(__file__).with_name("pyfunc_model.py"))
        reqs = _pip_requirements()

        def go() -> str:
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.registry_uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name=name, python_model=code, artifacts={"model_dir": str(model_dir)}, signature=sig,
                    input_example={input_name: input_example} if input_example is not None else None,
                    pip_requirements=reqs,
                )
            return info.model_uri

        return self._call("log model", go)

    def register(self, model_uri: str, name: str, run_id: str | None = None, tags: Mapping[str, str] | None = None,
                 description: str | None = None) -> str:
        """Register ``model_uri`` under ``name``; returns the new version number (as a string)."""

        def ensure_registered() -> None:
            try:
                self.client.get_registered_model(name)
            except Exception:
                try:
                    self.client.create_registered_model(name)
                except Exception:
                    self.client.get_registered_model(name)

        self._call("create registered model", ensure_registered)
        source = model_uri
        model_id = None
        if model_uri.startswith("models:/m-"):
            model_id = model_uri.split("/", 1)[1]
        mv = self._call("create model version", lambda: self.client.create_model_version(
            name, source=source, run_id=run_id, tags=dict(tags or {}), description=description, model_id=model_id))
        return str(mv.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._call(f"set alias {alias}", lambda: self.client.set_registered_model_alias(name, alias, version))

    def version_by_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, "source": mv.source, "tags": dict(mv.tags or {}),
                "aliases": list(mv.aliases or [])}

    def model_versions(self, name: str) -> list[dict[str, Any]]:
        mvs = self._call("search model versions", lambda: self.client.search_model_versions(f"name = '{name}'"))
        return [{"name": m.name, "version": str(m.version), "run_id": m.run_id, "aliases": list(m.aliases or []),
                 "tags": dict(m.tags or {}), "creation_timestamp": m.creation_timestamp} for m in mvs]

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call("tag model version", lambda: self.client.set_model_version_tag(name, version, key, value))

    def set_model_version_description(self, name: str, version: str, description: str) -> None:
        """Set the (markdown) description of a model version, shown on its page in the MLflow UI."""
        text = description[:_MAX_DESCRIPTION]
        self._call("describe model version", lambda: self.client.update_model_version(name, version, description=text))

    def model_version_description(self, name: str, version: str) -> str:
        """The description of a model version ("" when it has none)."""
        mv = self._call("get model version", lambda: self.client.get_model_version(name, version))
        return mv.description or ""

    def resolve_model_uri(self, uri: str) -> dict[str, Any]:
        """Resolve ``models:/name@alias`` or ``models:/name/version`` to {name, version, run_id}."""
        if not uri.startswith("models:/"):
            return {"name": None, "version": None, "run_id": None, "uri": uri}
        rest = uri[len("models:/"):]
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = self.version_by_alias(name, alias)
            if mv is None:
                raise NotFoundError(f"no version of model {name!r} has alias {alias!r}", got=uri,
                                    fix="Run a pipeline with a register step first, or use models:/NAME/VERSION.")
            return {"name": name, "version": mv["version"], "run_id": mv["run_id"], "uri": f"models:/{name}/{mv['version']}"}
        if "/" in rest:
            name, version = rest.rsplit("/", 1)
            return {"name": name, "version": version, "run_id": None, "uri": uri}
        return {"name": None, "version": None, "run_id": None, "uri": uri}

    def download_model_dir(self, model_uri: str, dst: str | Path | None = None) -> Path:
        """Download a logged aimass model and return the directory with ``card.json`` and weights."""
        import mlflow

        dst = Path(dst or tempfile.mkdtemp(prefix="aimass-model-"))
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        local = Path(self._call("download model", lambda: mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst))))
        for cand in [local / "artifacts" / "model_dir", *local.rglob("card.json")]:
            d = cand if cand.is_dir() else cand.parent
            if (d / "card.json").is_file():
                return d
        raise NotFoundError("the model has no aimass card.json: it was not logged by aimass", got=model_uri,
                            fix="Serve models registered by an aimass register step.")


_MAX_HISTORY = 10_000  # points per metric copied for a cached step
_MAX_DESCRIPTION = 5_000  # MLflow's limit on a model version description


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _finite(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))


def _pip_requirements() -> list[str]:
    # Explicit requirements: MLflow's inference spawns a process and loads the model, slow for nothing.
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "safetensors", "numpy", "aimass"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _info(r: Any) -> RunInfo:
    return RunInfo(
        run_id=r.info.run_id, name=r.info.run_name or r.data.tags.get(RUN_NAME, ""), status=r.info.status,
        start_time=r.info.start_time, end_time=r.info.end_time, tags=dict(r.data.tags), params=dict(r.data.params),
        metrics=dict(r.data.metrics), experiment_id=r.info.experiment_id,
    )


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's own HTTP retries back off for minutes; the Tracker retries with its own bounded deadline instead.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
