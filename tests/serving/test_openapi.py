"""The ingress's OpenAPI document matches what it answers: schemathesis with every response check, over
real HTTP against the real ASGI app (auth, error shapes and routes included; only the model call is
replaced by an in-process model, so no Ray is needed)."""

from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.serving._ingress import TOKEN, Server, make_ingress

AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPERATIONS = [
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("GET", "/metrics"),
]
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or "{" in p or m == "POST"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from aimass.serving.ingress import build_asgi_app

    with Server(build_asgi_app(make_ingress(tmp_path_factory.mktemp("openapi")))) as s:
        yield schemathesis.openapi.from_url(s.url + "/openapi.json", headers=AUTH), s.url


def test_the_served_document_is_the_apps(served):
    schema, _ = served
    assert {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()} == set(OPERATIONS)


@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_fuzz_operation(served, method, path, mode):
    schema, url = served
    operation = schema[path][method]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance, ignored_auth, missing_required_header, unsupported_method,
              allow_header_conformance]
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    calls = []

    @settings(max_examples=20, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        calls.append(1)
        case.call_and_validate(base_url=url, headers=AUTH, checks=checks, timeout=30)

    started = time.monotonic()
    run()
    assert calls, "no case was generated"
    assert time.monotonic() - started < 60


def test_the_document_declares_auth_errors_ready_statuses_and_metrics_as_text(served):
    _, url = served
    doc = httpx.get(url + "/openapi.json", headers=AUTH).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "401" in op["responses"] and "500" in op["responses"], (method, path)
    for path in ("/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready"):
        assert {"200", "404", "503"} <= set(doc["paths"][path]["get"]["responses"]), path
        assert "422" not in doc["paths"][path]["get"]["responses"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
