"""The control-plane API over real HTTP: auth, server-owned fields, validation, limits, runs lifecycle."""

from __future__ import annotations

import json
import shlex

import httpx
import pytest
import yaml

from aimass.api import ApiConfig, create_app
from aimass.exceptions import AuthError, InvalidRequestError
from aimass.k8s.testing import FakeKubeApi
from aimass.k8s.validation import validate_kuberay_object
from tests.api.conftest import IMAGE, NAMESPACE, TOKEN
from tests.k8s._support import BAD_PIPELINE, TINY_PIPELINE

RUNS = "/v1/pipelines/runs"


def _submit(client: httpx.Client, **body):
    body.setdefault("specYaml", TINY_PIPELINE)
    return client.post(RUNS, json=body)


# --- health and documents ---------------------------------------------------------------------
def test_health_ready_and_openapi_need_no_token(api):
    anon = api.client(identity=None)
    assert anon.get("/healthz").json() == {"status": "ok", "detail": None}
    assert anon.get("/readyz").status_code == 200
    doc = anon.get("/openapi.json").json()
    assert set(doc["paths"]) >= {RUNS, RUNS + "/{run_id}", RUNS + "/{run_id}/logs", RUNS + "/{run_id}:cancel"}
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert anon.get("/docs").status_code == 404  # no interactive UI to serve


def test_a_raw_yaml_body_is_a_submission_too(api):
    alice = api.client("alice")
    r = alice.post(RUNS, content=TINY_PIPELINE.encode(), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "alice" and r.json()["pipeline"] == yaml.safe_load(TINY_PIPELINE)["metadata"]["name"]
    # the same validation as JSON submissions: errors name the line of the document
    r = alice.post(RUNS, content=BAD_PIPELINE.encode(), headers={"Content-Type": "application/x-yaml; charset=utf-8"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_spec" and "specYaml:" in r.json()["errors"][0]["location"]
    r = alice.post(RUNS, content=b"\xff\xfe not text", headers={"Content-Type": "text/yaml"})
    assert r.status_code == 400 and "UTF-8" in r.json()["message"]
    r = alice.post(RUNS, content=b"a: 1\n" * 500_000, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 413  # the size limit comes first
    r = api.client(identity=None).post(RUNS, content=TINY_PIPELINE.encode(), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 401
    doc = alice.get("/openapi.json").json()
    assert set(doc["paths"][RUNS]["post"]["requestBody"]["content"]) == {"application/json", "application/yaml"}


def test_metrics_need_a_token_and_count_by_route_template(api):
    assert api.client(identity=None).get("/metrics").status_code == 401
    alice = api.client("alice")
    assert _submit(alice).status_code == 201
    assert alice.get(RUNS + "/no-such-run").status_code == 404
    r = alice.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(r.text):
        for smp in fam.samples:
            samples[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    assert samples[("aimass_api_runs_submitted_total", ())] >= 1
    assert samples[("aimass_api_auth_failures_total", ())] >= 1
    assert samples[("aimass_api_requests_total", (("code", "201"), ("method", "POST"), ("route", RUNS)))] >= 1
    # a run id never becomes a label value: the route template does
    assert samples[("aimass_api_requests_total", (("code", "404"), ("method", "GET"), ("route", RUNS + "/{run_id}")))] >= 1
    assert not any("no-such-run" in str(k) for k in samples)


def test_readyz_fails_when_kuberay_is_missing(serve):
    api = serve(fake=FakeKubeApi([NAMESPACE], crds_installed=False))
    r = api.client(identity=None).get("/readyz")
    assert r.status_code == 503 and "KubeRay CRDs are not installed" in r.json()["detail"]


def test_a_server_without_an_image_says_so_as_a_server_error(serve):
    """No image for the Ray pods is the operator's mistake: a 5xx naming the setting, and not ready."""
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    fake = FakeKubeApi([NAMESPACE])
    api = serve(backend=KubernetesExecutor(namespace=NAMESPACE, image=None, api_client=fake.api_client()), fake=fake)
    r = _submit(api.client("alice"))
    assert r.status_code == 500, r.text
    body = r.json()
    assert body["error"] == "server_misconfigured" and body["retryable"] is False
    assert "AIMASS_RAY_IMAGE" in body["fix"] and "ray.image.repository" in body["fix"]
    assert "--image" not in body["fix"]  # a flag of the CLI: nothing the API's caller can pass
    assert fake.list("rayjobs", NAMESPACE) == []
    ready = api.client(identity=None).get("/readyz")
    assert ready.status_code == 503 and "AIMASS_RAY_IMAGE" in ready.json()["detail"]
    # the SDK/CLI passes it on as the server's, and does not retry what cannot succeed
    from aimass.api.client import ControlPlaneExecutor
    from aimass.exceptions import ExecutorError
    from aimass.spec import parse_pipeline

    with pytest.raises(ExecutorError, match="no container image") as ei:
        ControlPlaneExecutor(api.url, token=TOKEN["alice"]).submit(parse_pipeline(TINY_PIPELINE), "abcd-1")
    assert ei.value.retryable is False and "AIMASS_RAY_IMAGE" in ei.value.fix
    # the client's own mistakes stay 4xx on that server
    assert api.client("alice").post(RUNS, json={"spec": {}, "specYaml": "x"}).status_code == 422
    assert api.client(identity=None).post(RUNS, json={"specYaml": TINY_PIPELINE}).status_code == 401


def test_methods_a_path_lacks_get_405_with_that_paths_allow(api):
    alice = api.client("alice")
    assert _submit(alice, runName="abcd").status_code == 201
    for path, allow in ((RUNS, "GET, POST"), (RUNS + "/abcd", "GET"), (RUNS + "/abcd/logs", "GET"),
                        (RUNS + "/abcd:cancel", "POST")):
        r = alice.request("DELETE", path)
        assert r.status_code == 405 and r.headers["Allow"] == allow, (path, r.status_code, r.headers.get("Allow"))
        assert r.json()["error"] == "method_not_allowed"
    # the cancel route is not the {run_id} route's: a GET of it is a 405, not a run id that fails its pattern
    assert alice.get(RUNS + "/abcd:cancel").status_code == 405
    assert alice.post(RUNS + "/abcd:cancel").json()["state"] == "CANCELLED"
    r = alice.get("/no/such/path")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_text_routes_document_text_and_json_errors(api):
    doc = api.client(identity=None).get("/openapi.json").json()
    for path in ("/metrics", RUNS + "/{run_id}/logs"):
        responses = doc["paths"][path]["get"]["responses"]
        assert set(responses["200"]["content"]) == {"text/plain"}, path
        assert set(responses["401"]["content"]) == {"application/json"}, path
    yaml_body = doc["paths"][RUNS]["post"]["requestBody"]["content"]["application/yaml"]["schema"]
    assert yaml_body["minLength"] == 1  # an empty document is not a valid request by the schema either


# --- authentication ---------------------------------------------------------------------------
def test_bearer_token_is_required(api):
    r = api.client(identity=None).get(RUNS)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="aimass"'
    assert r.json()["error"] == "unauthorized"
    r = api.client(token="wrong-token-0123456789abcdef").get(RUNS)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = httpx.get(api.url + RUNS, headers={"Authorization": f"Basic {TOKEN['alice']}"})
    assert r.status_code == 401
    r = httpx.get(api.url + RUNS, headers={"Authorization": f"Bearer {TOKEN['alice']}x"})
    assert r.status_code == 401
    assert api.client("alice").get(RUNS).status_code == 200


def test_the_server_refuses_to_run_open(monkeypatch, tmp_path):
    with pytest.raises(AuthError, match="refusing to start the API without a token"):
        create_app(ApiConfig())
    with pytest.raises(AuthError, match="loopback"):
        ApiConfig(insecure_local=True).check("0.0.0.0")
    ApiConfig(insecure_local=True).check("127.0.0.1")
    f = tmp_path / "tokens"
    f.write_text("# tokens\nalice:alice-token-0123456789abcdef\nsolo-token-0123456789abcdef\n")
    monkeypatch.setenv("AIMASS_API_TOKEN_FILE", str(f))
    cfg = ApiConfig.from_env()
    assert cfg.tokens["alice-token-0123456789abcdef"] == "alice"
    assert cfg.tokens["solo-token-0123456789abcdef"].startswith("token-")
    assert "alice-token" not in repr(cfg)
    f.write_text("short\n")
    with pytest.raises(InvalidRequestError, match="too short"):
        ApiConfig.from_env()

    from typer.testing import CliRunner

    from aimass.cli.main import app

    monkeypatch.delenv("AIMASS_API_TOKEN_FILE")
    r = CliRunner().invoke(app, ["api", "serve", "--port", "1"])
    assert r.exit_code == 1 and "refusing to start the API without a token" in r.stderr
    r = CliRunner().invoke(app, ["api", "serve", "--insecure-local", "--host", "0.0.0.0"])
    assert r.exit_code == 1 and "loopback" in r.stderr


# --- submission -------------------------------------------------------------------------------
def test_submit_yaml_creates_the_rayjob_the_server_decides(api):
    r = _submit(api.client("alice"), runName="20250104-000000-aaaaaa", labels={"team": "vision"})
    assert r.status_code == 201, r.text
    run = r.json()
    assert r.headers["Location"] == f"{RUNS}/20250104-000000-aaaaaa"
    assert run["runId"] == "20250104-000000-aaaaaa" and run["owner"] == "alice" and run["namespace"] == NAMESPACE
    assert run["state"] == "PENDING" and run["pipeline"] == "tiny" and run["labels"] == {"team": "vision"}
    job = api.fake.get("rayjobs", NAMESPACE, "aimass-20250104-000000-aaaaaa")
    assert validate_kuberay_object(job) == []
    assert job["metadata"]["annotations"]["aimass.io/owner"] == "alice"
    assert shlex.split(job["spec"]["entrypoint"]) == ["aimass", "run", "pipeline.yaml", "--run-id", "20250104-000000-aaaaaa"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == IMAGE and head["serviceAccountName"] == "aimass-runner"
    cm = api.fake.get("configmaps", NAMESPACE, "aimass-20250104-000000-aaaaaa-spec")
    assert yaml.safe_load(cm["data"]["pipeline.yaml"])["metadata"]["name"] == "tiny"


def test_submit_json_object_and_generated_run_id(api):
    r = api.client("bob").post(RUNS, json={"spec": yaml.safe_load(TINY_PIPELINE)})
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "bob" and len(r.json()["runId"]) <= 40


@pytest.mark.parametrize("field", ["status", "owner", "namespace", "serviceAccount", "image", "entrypoint", "runtimeEnv"])
def test_server_owned_fields_are_refused(api, field):
    r = _submit(api.client("alice"), **{field: "mallory"})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "server_owned_field" and body["location"] == field
    assert f"`{field}` is set by the server and cannot be set by clients" in body["message"]
    assert api.fake.list("rayjobs") == [] and api.fake.list("configmaps") == []


def test_unknown_and_malformed_bodies(api):
    c = api.client("alice")
    r = _submit(c, spce={})
    assert r.status_code == 422 and r.json()["message"] == "unknown field `spce`"
    r = c.post(RUNS, json={"spec": yaml.safe_load(TINY_PIPELINE), "specYaml": TINY_PIPELINE})
    assert r.status_code == 422 and "exactly one" in r.text
    r = c.post(RUNS, json={})
    assert r.status_code == 422 and "exactly one" in r.text
    r = c.post(RUNS, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    r = _submit(c, runName="Bad Name!")
    assert r.status_code == 422 and r.json()["location"] == "runName"
    r = _submit(c, labels={"aimass.io/owner": "mallory"})
    assert r.status_code == 422
    r = c.post(RUNS, json=[1, 2])
    assert r.status_code == 422
    assert api.fake.list("rayjobs") == []


def test_spec_validation_is_the_clis(api):
    c = api.client("alice")
    r = _submit(c, specYaml=BAD_PIPELINE)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid_spec"
    assert any(e["location"] == "specYaml:13" and "confg" in e["message"] for e in body["errors"])
    r = _submit(c, specYaml="a: &a [1]\nb: !!python/object:os.system ls\n")
    assert r.status_code == 422 and "tag" in r.text
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    r = _submit(c, specYaml=bomb)
    assert r.status_code == 422 and "alias bomb" in r.text
    deep: dict = {}
    cur = deep
    for _ in range(60):
        cur["x"] = {}
        cur = cur["x"]
    r = c.post(RUNS, json={"spec": deep})
    assert r.status_code == 422 and "nested deeper" in r.text
    r = _submit(c, specYaml=TINY_PIPELINE.replace("numWorkers: 3", "numWorkers: 1000000"))
    assert r.status_code == 422 and "numWorkers" in r.text
    assert api.fake.list("rayjobs") == []


def test_run_id_conflict(api):
    c = api.client("alice")
    assert _submit(c, runName="20250104-000000-cccccc").status_code == 201
    r = _submit(c, runName="20250104-000000-cccccc")
    assert r.status_code == 409 and r.json()["error"] == "conflict"


# --- reading, logs, cancel --------------------------------------------------------------------
def test_owners_see_their_runs_admins_see_all(api):
    a, b, root = api.client("alice"), api.client("bob"), api.client("root")
    assert _submit(a, runName="20250104-000000-aaaaa1").status_code == 201
    assert _submit(b, runName="20250104-000000-bbbbb1").status_code == 201
    assert [r["runId"] for r in a.get(RUNS).json()["items"]] == ["20250104-000000-aaaaa1"]
    assert [r["runId"] for r in b.get(RUNS).json()["items"]] == ["20250104-000000-bbbbb1"]
    assert len(root.get(RUNS).json()["items"]) == 2
    assert a.get(f"{RUNS}/20250104-000000-aaaaa1").json()["owner"] == "alice"
    assert a.get(f"{RUNS}/20250104-000000-bbbbb1").status_code == 404  # not yours: as if absent
    assert a.post(f"{RUNS}/20250104-000000-bbbbb1:cancel").status_code == 404
    assert a.get(f"{RUNS}/20250104-000000-bbbbb1/logs").status_code == 404
    assert root.get(f"{RUNS}/20250104-000000-bbbbb1").status_code == 200
    api.fake.set_rayjob_status(NAMESPACE, "aimass-20250104-000000-aaaaa1", jobDeploymentStatus="Running", jobStatus="RUNNING")
    assert root.get(RUNS, params={"state": "RUNNING"}).json()["items"][0]["runId"] == "20250104-000000-aaaaa1"
    assert root.get(RUNS, params={"limit": 1}).status_code == 200
    assert a.get(f"{RUNS}/nope--").status_code == 422


def test_logs_and_cancel(api):
    c = api.client("alice")
    rid = "20250104-000000-dddddd"
    assert _submit(c, runName=rid).status_code == 201
    r = c.get(f"{RUNS}/{rid}/logs")
    assert r.status_code == 404 and "no logs yet" in r.json()["message"]
    api.fake.add_pod(NAMESPACE, f"aimass-{rid}-p", {"job-name": f"aimass-{rid}"}, log="one\ntwo\nthree\n")
    api.fake.set_rayjob_status(NAMESPACE, f"aimass-{rid}", jobDeploymentStatus="Running", jobStatus="RUNNING")
    r = c.get(f"{RUNS}/{rid}/logs")
    assert r.status_code == 200 and r.text == "one\ntwo\nthree\n" and r.headers["content-type"].startswith("text/plain")
    assert c.get(f"{RUNS}/{rid}/logs", params={"tailLines": 1}).text == "three\n"
    with c.stream("GET", f"{RUNS}/{rid}/logs", params={"follow": "true"}) as s:
        assert list(s.iter_lines()) == ["one", "two", "three"]
    r = c.post(f"{RUNS}/{rid}:cancel")
    assert r.status_code == 200 and r.json()["state"] == "CANCELLED"
    assert api.fake.get("rayjobs", NAMESPACE, f"aimass-{rid}")["spec"]["suspend"] is True
    assert c.get(f"{RUNS}/{rid}").json()["state"] == "CANCELLED"


# --- limits -----------------------------------------------------------------------------------
def test_body_size_limit_before_parsing(serve):
    from tests.api.conftest import TOKENS

    api = serve(config=ApiConfig(tokens=dict(TOKENS), max_body_bytes=4096, rate_per_s=1000, burst=1000))
    c = api.client("alice")
    junk = b"\xff" * 5000  # not even JSON: 413 proves it was never parsed
    r = c.post(RUNS, content=junk, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    r = c.post(RUNS, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    import socket

    port = int(api.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # httpx will not send a bad header
        sock.sendall(b"POST " + RUNS.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: abc\r\n\r\n{}")
        assert sock.recv(200).split(b" ")[1] == b"400"  # refused (by uvicorn's HTTP parser or by us)
    assert _submit(c).status_code == 201  # a normal body still goes through


def test_rate_limit_per_identity(serve):
    from tests.api.conftest import TOKENS

    now = [0.0]
    cfg = ApiConfig(tokens=dict(TOKENS), rate_per_s=1.0, burst=3)
    fake = FakeKubeApi([NAMESPACE])
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    backend = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, api_client=fake.api_client())
    app = create_app(cfg, backend=backend, clock=lambda: now[0])
    from tests.api.conftest import ServerThread

    st = ServerThread(app).start()
    try:
        a = httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {TOKEN['alice']}"})
        b = httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {TOKEN['bob']}"})
        assert [a.get(RUNS).status_code for _ in range(3)] == [200, 200, 200]
        r = a.get(RUNS)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["retryable"] is True
        assert b.get(RUNS).status_code == 200  # buckets are per identity
        now[0] += 1.0
        assert a.get(RUNS).status_code == 200
        bad = httpx.Client(base_url=st.url, headers={"Authorization": "Bearer guess-0123456789abcdef"})
        codes = [bad.get(RUNS).status_code for _ in range(15)]
        assert codes[0] == 401 and 429 in codes  # guessing tokens is slowed down too
        assert a.get("/healthz").status_code == 200
        for c in (a, b, bad):
            c.close()
    finally:
        st.stop()


# --- the client executor and the CLI over the API -----------------------------------------------
def test_control_plane_executor_end_to_end(api, tmp_path):
    from aimass.api.client import ControlPlaneExecutor
    from aimass.exceptions import NotFoundError, SpecErrors
    from tests.k8s._support import tiny_spec

    tok = tmp_path / "token"
    tok.write_text(TOKEN["alice"] + "\n")
    ex = ControlPlaneExecutor(api.url, token_file=str(tok))
    ref = ex.submit(tiny_spec(), "20250104-000000-eeeeee", labels={"team": "x"})
    assert ref.backend == "api" and ref.owner == "alice" and ref.options == {"token_file": str(tok)}
    assert ex.status(ref).state == "PENDING"
    assert [r.run_id for r in ex.list()] == ["20250104-000000-eeeeee"]
    api.fake.add_pod(NAMESPACE, "aimass-20250104-000000-eeeeee-p", {"job-name": "aimass-20250104-000000-eeeeee"}, log="hi\n")
    assert list(ex.logs(ref)) == ["hi"]
    assert ex.cancel(ref).state == "CANCELLED"
    with pytest.raises(NotFoundError):
        ex.get("20250104-000000-ffffff")
    bad = tiny_spec(BAD_PIPELINE.replace("confg", "config"), source="bad.yaml")
    bad.spec.steps[1].config["numWorkers"] = 0
    with pytest.raises(SpecErrors) as ei:
        ex.submit(bad, "20250104-000000-ffffff")
    assert ei.value.errors[0].location.startswith("bad.yaml:")
    with pytest.raises(AuthError):
        ControlPlaneExecutor(api.url, token="nope-nope-nope-nope-nope").list()
    ex.close()


def test_cli_submit_to_api_and_runs(api, tmp_path):
    from typer.testing import CliRunner

    from aimass.cli.main import app

    tok = tmp_path / "token"
    tok.write_text(f"alice:{TOKEN['alice']}\n")
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY_PIPELINE)
    runner = CliRunner()
    r = runner.invoke(app, ["submit", str(f), "--to", "api", "--api-url", api.url, "--token-file", str(tok),
                            "--run-id", "20250104-000000-gggggg", "-o", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["owner"] == "alice"
    assert TOKEN["alice"] not in (tmp_path / "home" / "submissions.json").read_text()
    api.fake.set_rayjob_status(NAMESPACE, "aimass-20250104-000000-gggggg", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    r = runner.invoke(app, ["runs", "list", "-o", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["state"] == "SUCCEEDED"
    r = runner.invoke(app, ["runs", "list", "--backend", "api", "--api-url", api.url, "--token-file", str(tok), "-o", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["run_id"] == "20250104-000000-gggggg"
    r = runner.invoke(app, ["runs", "cancel", "20250104-000000-gggggg"])
    assert r.exit_code == 0 and "SUCCEEDED" in r.stdout  # finished runs stay finished


def test_insecure_local_mode(serve):
    api = serve(config=ApiConfig(insecure_local=True))
    r = api.client(identity=None).post(RUNS, json={"specYaml": TINY_PIPELINE})
    assert r.status_code == 201 and r.json()["owner"] == "local"
