"""The run loop on a library of DAG shapes: order, parallelism, data flow, cache, retries, resume, MLflow."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

from aimass.exceptions import RetryableStepError, StepError
from aimass.orchestrator import run_pipeline
from aimass.orchestrator.executors import ThreadStepRunner
from aimass.settings import Settings
from aimass.spec import parse_pipeline
from aimass.spec.configs.base import StepConfig
from aimass.steps import Step, register_step
from aimass.tracking import Tracker

LOG_LOCK = threading.Lock()


class ProbeConfig(StepConfig):
    INPUTS: ClassVar[dict[str, bool]] = {"value": False}
    OUTPUTS: ClassVar[tuple[str, ...]] = ("value",)

    add: int = 1
    sleep_s: float = Field(0.0, ge=0)
    fail_file: str | None = None  # while this file exists, the step fails
    retryable: bool = False
    log_file: str


class ProbeStep(Step):
    """Adds ``add`` to the sum of its inputs; records when it ran."""

    type_name = "probe"

    def run(self, ctx, config):
        t0 = time.time()
        time.sleep(config.sleep_s)
        with LOG_LOCK, open(config.log_file, "a") as f:
            f.write(json.dumps({"step": ctx.step_name, "start": t0, "end": time.time(), "attempt": ctx.attempt}) + "\n")
        if config.fail_file and os.path.exists(config.fail_file):
            left = int(Path(config.fail_file).read_text() or "0")
            if left > 0:  # the file counts the failures still to come
                Path(config.fail_file).write_text(str(left - 1))
                err = RetryableStepError if config.retryable else StepError
                raise err(f"{ctx.step_name} failed on purpose")
        ctx.log_metrics({"value": 1.0})
        upstream = ctx.inputs.get("value")
        return {"value": config.add + (upstream or 0)}


class Probe2Config(ProbeConfig):
    INPUTS: ClassVar[dict[str, bool]] = {"left": True, "right": True}


class JoinStep(ProbeStep):
    type_name = "join"

    def run(self, ctx, config):
        out = super().run(ctx, config)
        return {"value": out["value"] + ctx.inputs["left"] + ctx.inputs["right"]}


register_step("probe", ProbeStep, ProbeConfig)
register_step("join", JoinStep, Probe2Config)


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings.load(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"),
                         mlflow_artifact_location=str(tmp_path / "mlartifacts"), home=str(tmp_path))


def pipeline(steps: list[dict], name: str = "dag") -> dict:
    return {"apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": name},
            "spec": {"seed": 1, "steps": steps}}


def probe(name, log, deps=(), **cfg):
    s = {"name": name, "type": "probe", "config": {"logFile": str(log), **cfg}}
    if deps:
        s["dependsOn"] = list(deps)
    return s


def runs_log(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def go(spec, settings, **kw):
    return run_pipeline(parse_pipeline(spec), settings, runner=ThreadStepRunner(), connect=False, **kw)


def test_linear_passes_values_in_order(settings, tmp_path):
    log = tmp_path / "log"
    st = go(pipeline([probe("a", log), probe("b", log, ["a"], add=10), probe("c", log, ["b"], add=100)]), settings)
    assert st.status == "SUCCEEDED"
    assert st.steps["c"].outputs["value"] == 111
    assert [r["step"] for r in runs_log(log)] == ["a", "b", "c"]


def test_fan_out_runs_in_parallel(settings, tmp_path):
    log = tmp_path / "log"
    steps = [probe("root", log)] + [probe(f"leaf{i}", log, ["root"], sleepS=0.5) for i in range(3)]
    st = go(pipeline(steps), settings)
    assert st.status == "SUCCEEDED"
    leaves = [r for r in runs_log(log) if r["step"].startswith("leaf")]
    assert max(r["start"] for r in leaves) < min(r["end"] for r in leaves), "leaves did not overlap"


def test_fan_in_and_diamond(settings, tmp_path):
    log = tmp_path / "log"
    steps = [
        probe("top", log),
        probe("left", log, ["top"], add=2),
        probe("right", log, ["top"], add=3),
        {"name": "bottom", "type": "join", "dependsOn": ["left", "right"], "config": {"logFile": str(log), "add": 0},
         "inputs": {"left": "left.value", "right": "right.value"}},
    ]
    st = go(pipeline(steps), settings)
    assert st.status == "SUCCEEDED"
    assert st.steps["bottom"].outputs["value"] == (1 + 2) + (1 + 3)
    order = [r["step"] for r in runs_log(log)]
    assert order[0] == "top" and order[-1] == "bottom"


def test_rerun_is_cached_and_a_config_change_invalidates_downstream_only(settings, tmp_path):
    log = tmp_path / "log"
    steps = [probe("a", log), probe("b", log, ["a"]), probe("c", log, ["b"])]
    first = go(pipeline(steps), settings)
    second = go(pipeline(steps), settings)
    assert [s.cached for s in second.steps.values()] == [True, True, True]
    assert second.steps["c"].outputs == first.steps["c"].outputs
    assert len(runs_log(log)) == 3
    steps[1]["config"]["add"] = 5
    third = go(pipeline(steps), settings)
    assert {n: s.cached for n, s in third.steps.items()} == {"a": True, "b": False, "c": False}
    assert third.steps["c"].outputs["value"] == 1 + 5 + 1
    steps[2]["cache"] = False
    fourth = go(pipeline(steps), settings)
    assert fourth.steps["c"].cached is False and fourth.steps["b"].cached is True


def test_cache_entry_with_missing_artifacts_is_not_used(settings, tmp_path):
    from aimass.orchestrator import cache
    from aimass.storage import get_store

    store = get_store(settings.artifact_root)
    store.put_bytes("runs/x/steps/a/model/weights", b"w")
    cache.store_entry(store, "k1", outputs={"model": {"key": "runs/x/steps/a/model/weights", "root": store.root_uri}}, run_id="x", step="a")
    assert cache.lookup(store, "k1") is not None
    store.delete("runs/x")
    assert cache.lookup(store, "k1") is None


def test_cache_key_depends_on_config_inputs_code_and_seed():
    from aimass.orchestrator.cache import cache_key

    base = dict(step_type="t", config={"a": 1}, inputs={"x": "k:o"}, code_version="c1", seed=1)
    k = cache_key(**base)
    assert cache_key(**base) == k
    for change in ({"config": {"a": 2}}, {"inputs": {"x": "k2:o"}}, {"code_version": "c2"}, {"seed": 2}):
        assert cache_key(**{**base, **change}) != k


def test_retryable_failure_is_retried_with_backoff(settings, tmp_path):
    log, flag = tmp_path / "log", tmp_path / "flag"
    flag.write_text("2")
    step = probe("flaky", log, failFile=str(flag), retryable=True)
    step["retries"] = {"maxAttempts": 5, "backoffS": 0.3, "backoffMultiplier": 1.0}
    st = go(pipeline([step]), settings)
    assert st.status == "SUCCEEDED"
    attempts = [r["attempt"] for r in runs_log(log)]
    assert attempts == [1, 2, 3]
    assert st.steps["flaky"].attempts == 3
    gaps = [b["start"] - a["end"] for a, b in zip(runs_log(log), runs_log(log)[1:], strict=False)]
    assert min(gaps) >= 0.25


def test_user_error_is_not_retried_and_skips_downstream(settings, tmp_path):
    log, flag = tmp_path / "log", tmp_path / "flag"
    flag.write_text("99")
    bad = probe("bad", log, failFile=str(flag), retryable=False)
    bad["retries"] = 3
    st = go(pipeline([probe("ok", log), bad, probe("after", log, ["bad"])]), settings)
    assert st.status == "FAILED"
    assert st.steps["bad"].attempts == 1 and st.steps["bad"].status == "FAILED"
    assert st.steps["after"].status == "SKIPPED"
    assert "failed on purpose" in st.error["message"]


def test_timeout_fails_the_step(settings, tmp_path):
    log = tmp_path / "log"
    slow = probe("slow", log, sleepS=2.0)
    slow["timeoutS"] = 0.3
    st = go(pipeline([slow]), settings)
    assert st.status == "FAILED" and "timed out" in st.steps["slow"].error["message"]


def test_resume_continues_without_redoing_completed_steps(settings, tmp_path):
    log, flag = tmp_path / "log", tmp_path / "flag"
    flag.write_text("1")
    steps = [probe("a", log), probe("b", log, ["a"], failFile=str(flag)), probe("c", log, ["b"])]
    for s in steps:
        s["cache"] = False  # prove resume itself skips completed steps, not the cache
    first = go(pipeline(steps), settings)
    assert first.status == "FAILED"
    second = go(pipeline(steps), settings, run_id=first.run_id, resume=True)
    assert second.status == "SUCCEEDED" and second.run_id == first.run_id
    assert second.steps["a"].executions == 1 and second.steps["b"].executions == 2
    assert second.steps["b"].attempts == 1  # a resumed step starts a fresh retry budget
    assert [r["step"] for r in runs_log(log)] == ["a", "b", "b", "c"]
    assert second.mlflow_run_id == first.mlflow_run_id  # one logical run in MLflow

    changed = [dict(s) for s in steps]
    changed[2] = probe("c", log, ["b"], add=7)
    from aimass.exceptions import SpecError

    with pytest.raises(SpecError, match="spec changed"):
        go(pipeline(changed), settings, run_id=first.run_id, resume=True)


def test_mlflow_parent_and_child_runs(settings, tmp_path):
    log = tmp_path / "log"
    st = go(pipeline([probe("a", log), probe("b", log, ["a"])], name="tracked"), settings)
    tr = Tracker(settings.tracking_uri)
    parent = tr.get_run(st.mlflow_run_id)
    assert parent.status == "FINISHED" and parent.tags["aimass.kind"] == "pipeline"
    children = tr.child_runs(st.mlflow_run_id, st.experiment_id)
    assert sorted(c.name for c in children) == ["a", "b"]
    assert all(c.status == "FINISHED" and c.tags["aimass.kind"] == "step" for c in children)
    assert all(c.metrics.get("value") == 1.0 for c in children)
    assert "config.add" in children[0].params


def test_state_lists_and_loads(settings, tmp_path):
    from aimass.orchestrator.state import list_runs, load_run

    log = tmp_path / "log"
    st = go(pipeline([probe("a", log)]), settings)
    assert list_runs(settings)[0].run_id == st.run_id
    assert load_run(settings, st.run_id).steps["a"].status == "SUCCEEDED"
    from aimass.exceptions import InvalidRequestError, NotFoundError

    with pytest.raises(NotFoundError):
        load_run(settings, "no-such-run")
    with pytest.raises(InvalidRequestError):
        load_run(settings, "../../etc")
