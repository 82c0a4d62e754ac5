"""Property-based fuzzing of the control-plane API from its own served OpenAPI document (schemathesis).

Every operation gets a bounded, derandomized run of valid (positive) and invalid (negative) requests
over real HTTP. Every answer must be a non-5xx, with a documented status code, content type, headers
and body schema; invalid requests must be refused with a 4xx. Then schemathesis's own runner goes over
the whole API with every check it has (all phases: examples, coverage, fuzzing, stateful), which adds
the methods a path does not take (405 with the right ``Allow``), valid data that must be accepted,
missing headers and authentication that must not be ignored.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import IMAGE, NAMESPACE, TOKEN, TOKENS, ServerThread
from tests.k8s._support import TINY_PIPELINE

OPERATIONS = [
    ("POST", "/v1/pipelines/runs"),
    ("GET", "/v1/pipelines/runs"),
    ("GET", "/v1/pipelines/runs/{run_id}"),
    ("GET", "/v1/pipelines/runs/{run_id}/logs"),
    ("POST", "/v1/pipelines/runs/{run_id}:cancel"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def served():
    from aimass.api import ApiConfig, create_app
    from aimass.k8s.testing import FakeKubeApi
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    fake = FakeKubeApi([NAMESPACE])
    # Every RayJob gets its submitter pod at once, so `logs?follow=true` on a run the fuzzer creates streams
    # instead of waiting (up to 30 min) for a pod that no controller will ever start here.
    create = fake._create

    def create_with_pod(plural, group, ns, body):
        answer = create(plural, group, ns, body)
        if plural == "rayjobs" and answer.status == 201:
            name = body["metadata"]["name"]
            fake.add_pod(ns, f"{name}-submitter", {"job-name": name}, log="started\n")
        return answer

    fake._create = create_with_pod
    backend = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, api_client=fake.api_client(), sleep=lambda s: None)
    app = create_app(ApiConfig(tokens=dict(TOKENS), rate_per_s=10_000, burst=10_000, max_body_bytes=256 * 1024),
                     backend=backend)
    st = ServerThread(app).start()
    import httpx

    # A few real runs, so ids sometimes exist (with logs, one cancelled).
    with httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {TOKEN['alice']}"}, timeout=120) as c:
        for rid in ("aaaa", "bbbb", "cccc"):
            r = c.post("/v1/pipelines/runs", json={"specYaml": TINY_PIPELINE, "runName": rid})
            assert r.status_code == 201, r.text
        c.post("/v1/pipelines/runs/cccc:cancel")
    schema = schemathesis.openapi.from_url(st.url + "/openapi.json")
    yield schema, st.url
    st.stop()


def test_the_served_document_is_the_apps(served):
    schema, url = served
    ops = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert ops == set(OPERATIONS)


# Negative cases need something to break: the health routes take no input at all.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or p.startswith("/v1/")]


@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_fuzz_operation(served, method, path, mode):
    schema, url = served
    operation = schema[path][method]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance]
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    if path.startswith("/v1/"):
        checks.append(ignored_auth)
    auth = {"Authorization": f"Bearer {TOKEN['alice']}"} if path.startswith("/v1/") else {}
    calls = []

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        calls.append(1)
        case.call_and_validate(base_url=url, headers=auth, checks=checks, timeout=30)

    started = time.monotonic()
    run()
    assert calls, "no case was generated"
    assert time.monotonic() - started < 120


# What the API validates beyond what a JSON schema can say: a pipeline document that fits the request's
# schema (any object, any YAML text) may still break the pipeline's own rules (its schema, an acyclic DAG,
# references that exist), and is refused with 422 listing every problem. Only there is a 422 an answer to
# valid data; every other check and operation runs as schemathesis ships it.
_CONFIG = """
[[operations]]
include-operation-id = "submit_run_v1_pipelines_runs_post"
checks.positive_data_acceptance.expected-statuses = ["201", "401", "409", "422", "429"]
"""


def test_schemathesis_all_checks_all_phases_clean(served, tmp_path):
    _, url = served
    cfg = tmp_path / "schemathesis.toml"
    cfg.write_text(_CONFIG)
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [str(cli), "--no-color", "--config-file", str(cfg), "run", url + "/openapi.json", "--checks", "all",
           "-H", f"Authorization: Bearer {TOKEN['alice']}", "--max-examples", "25", "--seed", "1", "--workers", "1",
           "--request-timeout", "30", "--max-failures", "20"]
    started = time.monotonic()
    # cwd: schemathesis keeps a cache of crashes in ./.schemathesis, which belongs in no checkout
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"}, check=False,
                       cwd=tmp_path)
    out = r.stdout[-12000:] + r.stderr[-2000:]
    assert r.returncode == 0, out
    assert "8 selected / 8 total" in r.stdout and " passed" in r.stdout, out
    assert time.monotonic() - started < 240
