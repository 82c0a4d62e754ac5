"""Property-based fuzzing of the control-plane API from its own served OpenAPI document (schemathesis).

Every operation gets a bounded, derandomized run of valid (positive) and invalid (negative) requests
over real HTTP. Every answer must be a non-5xx, with a documented status code, content type, headers
and body schema; invalid requests must be refused with a 4xx.
"""

from __future__ import annotations

import time

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
    backend = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, api_client=fake.api_client(), sleep=lambda s: None)
    app = create_app(ApiConfig(tokens=dict(TOKENS), rate_per_s=10_000, burst=10_000, max_body_bytes=256 * 1024),
                     backend=backend)
    st = ServerThread(app).start()
    import httpx

    # A few real runs, so ids sometimes exist (some with logs, one cancelled).
    with httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {TOKEN['alice']}"}) as c:
        for rid in ("aaaa", "bbbb", "cccc"):
            assert c.post("/v1/pipelines/runs", json={"specYaml": TINY_PIPELINE, "runName": rid}).status_code == 201
        fake.add_pod(NAMESPACE, "aimass-aaaa-p", {"job-name": "aimass-aaaa"}, log="hello\n")
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
