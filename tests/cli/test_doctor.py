"""``aimass doctor``: each check is made to fail by a real condition (a port held here, a file with the wrong mode,
a server that does not answer, a leftover process, ...) and names the problem and its fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aimass import diagnostics as d
from tests.conftest import aimass_bin, cli_env
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A fresh AIMASS_HOME, free ports of our own, nothing remote configured."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("AIMASS_HOME", str(home))
    for var in ("AIMASS_TRACKING_URI", "AIMASS_ARTIFACT_ROOT", "AIMASS_RAY_ADDRESS", "RAY_ADDRESS", "AIMASS_S3_ENDPOINT_URL",
                "AIMASS_SERVE_TOKEN_FILE", "AIMASS_API_TOKEN_FILE", "RAY_AUTH_TOKEN_PATH", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AIMASS_RAY_PORT", "AIMASS_RAY_DASHBOARD_PORT", "AIMASS_SERVE_PORT"):
        monkeypatch.setenv(var, str(free_port()))
    return home


def settings():
    from aimass.settings import Settings

    return Settings.load()


@pytest.fixture()
def held_port():
    """A loopback port this test listens on (accepts into the backlog, never answers)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


_BOUND: list[socket.socket] = []


def closed_port() -> int:
    """A port that refuses connections for the rest of this module: bound here, never listening (so no
    other process can take it meanwhile)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _BOUND.append(s)
    return s.getsockname()[1]


@pytest.fixture(autouse=True, scope="module")
def _release_bound_ports():
    yield
    while _BOUND:
        _BOUND.pop().close()


def test_everything_passes_on_a_clean_setup(env):
    checks = {c.name: c for c in d.run_checks()}
    assert [n for n, _, _ in d.CHECKS] == list(checks)
    bad = {n: c for n, c in checks.items() if c.status == "fail"}
    assert not bad, bad


def test_python_too_old():
    c = d.check_python((3, 10, 12))
    assert c.status == "fail" and "3.10.12" in c.detail and "python3.11" in c.fix
    assert d.check_python().status == "ok"


def test_packages_missing_or_off_the_lock(tmp_path):
    c = d.check_packages(("ray", "aimass-no-such-package"))
    assert c.status == "fail" and "aimass-no-such-package" in c.detail and "constraints.txt" in c.fix
    lock = tmp_path / "constraints.txt"
    lock.write_text("ray==0.0.1\ntorch==2.13.0\n")
    c = d.check_packages(("ray", "torch"), constraints=lock)
    assert c.status == "warn" and "constraints.txt pins 0.0.1" in c.detail and "torch" not in c.detail
    assert d.check_packages().status == "ok"  # the real lock of this checkout


def test_a_broken_torch_install_fails_the_cli_with_json(tmp_path):
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('half-installed')\n")
    env = cli_env(PYTHONPATH=f"{shadow.parent}{os.pathsep}{REPO}")
    out = subprocess.run([aimass_bin(), "doctor", "--check", "torch", "--output", "json"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["failed"] == ["torch"]
    (c,) = doc["checks"]
    assert "incomplete" in c["detail"] and str(shadow) in c["detail"] and "--force-reinstall" in c["fix"]


def test_torch_build_is_named():
    c = d.check_torch()
    assert c.status == "ok" and ("CPU build" in c.detail or "CUDA" in c.detail)


def test_gpus_named_that_do_not_exist(env, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "97")
    c = d.check_gpus()
    assert c.status == "fail" and "CUDA_VISIBLE_DEVICES=97" in c.detail and "nvidia-smi -L" in c.fix
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert d.check_gpus().status in ("ok", "warn")


def test_a_port_held_by_another_process(env, held_port, monkeypatch):
    monkeypatch.setenv("AIMASS_SERVE_PORT", str(held_port))
    c = d.check_ports(settings())
    assert c.status == "fail" and f"{held_port} (Serve HTTP)" in c.detail and "AIMASS_SERVE_PORT=<port>" in c.fix
    assert f"pid {os.getpid()}" in c.detail or os.geteuid() != 0  # root sees who holds it
    monkeypatch.setenv("AIMASS_SERVE_PORT", str(free_port()))
    monkeypatch.setenv("AIMASS_RAY_PORT", str(held_port))
    c = d.check_ports(settings())
    assert c.status == "fail" and f"{held_port} (Ray GCS)" in c.detail and "AIMASS_RAY_PORT=<port>" in c.fix


def test_a_stale_cluster_record_and_leftover_cluster_processes(env):
    from aimass.orchestrator.ray_runtime import local_cluster_file, ray_temp_dir

    local_cluster_file(env).write_text(json.dumps({"address": f"127.0.0.1:{closed_port()}"}))
    c = d.check_local_cluster(settings())
    assert c.status == "warn" and "stale record" in c.detail and "aimass down" in c.fix
    assert local_cluster_file(env).exists()  # the doctor only looks
    # a process of an earlier cluster (its command line names this home's Ray temp dir) outlived its GCS
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={ray_temp_dir(env)}"])
    try:
        c = d.check_local_cluster(settings())
        assert c.status == "fail" and str(leftover.pid) in c.detail and "aimass down" in c.fix
    finally:
        leftover.kill()
        leftover.wait()


class _ServeLike(BaseHTTPRequestHandler):
    routes: dict | None = {"/": "aimass"}

    def do_GET(self):  # noqa: N802
        if self.path == "/-/routes" and self.routes is not None:
            body, code = json.dumps(self.routes).encode(), 200
        else:
            body, code = b'{"error": "not found"}', 404
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture()
def http_server():
    servers = []

    def start(handler):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_a_stale_serve_proxy_or_another_server_on_the_serve_port(env, http_server, monkeypatch):
    port = http_server(_ServeLike)
    monkeypatch.setenv("AIMASS_SERVE_PORT", str(port))
    c = d.check_serve(settings())
    assert c.status == "fail" and "stale serve app" in c.detail and "aimass at /" in c.detail and "AIMASS_SERVE_PORT" in c.fix

    class NotServe(_ServeLike):
        routes = None

    monkeypatch.setenv("AIMASS_SERVE_PORT", str(http_server(NotServe)))
    c = d.check_serve(settings())
    assert c.status == "fail" and "not as Ray Serve" in c.detail
    monkeypatch.setenv("AIMASS_SERVE_PORT", str(closed_port()))
    assert d.check_serve(settings()).status == "ok"


def test_tracking_database_unreachable_and_its_password_hidden(env, monkeypatch):
    monkeypatch.setenv("AIMASS_TRACKING_URI", f"postgresql://mlflow:s3cret@127.0.0.1:{closed_port()}/mlflow")
    c = d.check_tracking(settings())
    assert c.status == "fail" and "cannot reach the database" in c.detail and "AIMASS_TRACKING_URI" in c.fix
    assert "s3cret" not in c.detail and "mlflow:***@" in c.detail


def test_tracking_server_that_does_not_answer_times_out(env, held_port, monkeypatch):
    monkeypatch.setenv("AIMASS_TRACKING_URI", f"http://127.0.0.1:{held_port}")
    t0 = time.monotonic()
    c = d.check_tracking(settings())
    assert time.monotonic() - t0 < d.PROBE_TIMEOUT_S + 1.5
    assert c.status == "fail" and "does not answer (ReadTimeout)" in c.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_tracking_and_artifacts_in_a_read_only_place(env, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    monkeypatch.setenv("AIMASS_TRACKING_URI", f"sqlite:///{ro}/sub/mlflow.db")
    monkeypatch.setenv("AIMASS_ARTIFACT_ROOT", str(ro / "artifacts"))
    assert d.check_tracking(settings()).status == "fail"
    assert d.check_artifacts(settings()).status == "fail"


def test_s3_endpoint_down_and_s3_without_credentials(env, held_port, tmp_path, monkeypatch):
    monkeypatch.setenv("AIMASS_ARTIFACT_ROOT", "s3://aimass-bucket/runs")
    monkeypatch.setenv("AIMASS_S3_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    c = d.check_artifacts(settings())
    assert c.status == "fail" and "cannot reach the S3 endpoint" in c.detail and "AIMASS_S3_ENDPOINT_URL" in c.fix
    # an endpoint that is up, but no credentials anywhere
    monkeypatch.setenv("AIMASS_S3_ENDPOINT_URL", f"http://127.0.0.1:{held_port}")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    c = d.check_artifacts(settings())
    assert c.status == "fail" and "no S3 credentials" in c.detail and "AWS_ACCESS_KEY_ID" in c.fix


def test_ray_address_unreachable(env, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("AIMASS_RAY_ADDRESS", f"127.0.0.1:{port}")
    c = d.check_ray_address(settings())
    assert c.status == "fail" and f"127.0.0.1:{port}" in c.detail and "AIMASS_RAY_ADDRESS" in c.fix
    monkeypatch.setenv("AIMASS_RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    assert d.check_ray_address(settings()).status == "fail"


def test_shared_memory_too_small_or_missing(tmp_path):
    c = d.check_shm("/dev/shm", recommended_bytes=1 << 60)
    assert c.status == "warn" and "spills to disk" in c.detail and "--shm-size" in c.fix
    c = d.check_shm(str(tmp_path / "no-shm"))
    assert c.status == "warn" and "missing" in c.detail


def test_too_little_disk(env):
    c = d.check_disk(settings(), min_free_bytes=1 << 60)
    assert c.status == "fail" and "too little disk" in c.detail and "AIMASS_HOME" in c.fix
    assert d.check_disk(settings(), min_free_bytes=1, recommended_bytes=1).status == "ok"


def test_token_files_readable_by_others(env, tmp_path, monkeypatch):
    token = env / "serve-token"
    token.write_text("abc\n")
    token.chmod(0o644)
    api = tmp_path / "api-token"
    api.write_text("def\n")
    api.chmod(0o640)
    monkeypatch.setenv("AIMASS_API_TOKEN_FILE", str(api))
    c = d.check_tokens(settings())
    assert c.status == "fail" and f"{token} (mode 644)" in c.detail and f"{api} (mode 640)" in c.detail
    assert c.fix.startswith("Run: chmod 600 ") and str(token) in c.fix
    token.chmod(0o600)
    api.chmod(0o600)
    assert d.check_tokens(settings()).status == "ok"


def test_a_check_still_running_at_the_deadline_is_named(env, held_port, monkeypatch):
    monkeypatch.setenv("AIMASS_TRACKING_URI", f"http://127.0.0.1:{held_port}")
    t0 = time.monotonic()
    checks = {c.name: c for c in d.run_checks(deadline_s=0.5, only=["tracking", "python"])}
    assert time.monotonic() - t0 < 1.5
    assert checks["tracking"].status == "fail" and "did not finish within 0.5s" in checks["tracking"].detail
    assert checks["python"].status == "ok"


def test_invalid_settings_are_a_failed_check(env, monkeypatch):
    monkeypatch.setenv("AIMASS_SERVE_PORT", "eighty")
    checks = {c.name: c for c in d.run_checks()}
    assert checks["settings"].status == "fail" and "serve_http_port" in checks["settings"].detail
    assert checks["ports"].status == "warn" and "skipped" in checks["ports"].detail


def test_with_the_network_to_the_tracking_server_down_it_answers_within_10s(env, held_port):
    """The CLI as a user runs it: the tracking server and the S3 endpoint accept connections and never answer
    (a dead link behind a load balancer), the Ray address refuses. It finishes in time, exits 1 and names
    the failing checks."""
    environ = cli_env(AIMASS_TRACKING_URI=f"http://127.0.0.1:{held_port}", AIMASS_RAY_ADDRESS=f"127.0.0.1:{closed_port()}",
                      AIMASS_ARTIFACT_ROOT="s3://bucket/prefix", AIMASS_S3_ENDPOINT_URL=f"http://127.0.0.1:{held_port}",
                      AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_EC2_METADATA_DISABLED="true")
    t0 = time.monotonic()
    out = subprocess.run([aimass_bin(), "doctor", "--output", "json"], env=environ, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert {"tracking", "ray-address", "artifacts"} <= set(doc["failed"]), doc
    assert not [c for c in doc["checks"] if "the check itself failed" in c["detail"]], doc
    artifacts = next(c for c in doc["checks"] if c["name"] == "artifacts")
    # its own 1.5 s timeouts, or (a machine so loaded that boto3 takes seconds to import) the doctor's deadline
    assert "did not answer" in artifacts["detail"] or "did not finish within" in artifacts["detail"], artifacts
    tracking = next(c for c in doc["checks"] if c["name"] == "tracking")
    assert f"127.0.0.1:{held_port}" in tracking["detail"] and tracking["fix"]


def test_text_output_is_one_line_per_check_with_fixes(env, monkeypatch):
    monkeypatch.setenv("AIMASS_TRACKING_URI", f"postgresql://u@127.0.0.1:{closed_port()}/db")
    monkeypatch.setenv("COLUMNS", "200")
    out = subprocess.run([aimass_bin(), "doctor"], env=cli_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    names = [n for n, _, _ in d.CHECKS]
    for n in names:
        assert sum(1 for ln in lines if ln.split()[1:2] == [n]) == 1, out.stdout
    fail_line = next(i for i, ln in enumerate(lines) if ln.split()[1:2] == ["tracking"])
    assert lines[fail_line].startswith("✘") and "fix: Start it" in lines[fail_line + 1]
    assert "1 check(s) failed: tracking" in out.stdout
