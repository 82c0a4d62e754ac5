"""The test harness itself: it finds and kills only its own processes, and picks free ports.

Processes here are plain `sleep`s with a chosen argv[0] (``exec -a``), which is what a Ray worker's
process title looks like in /proc: no Ray needed, a second each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import cluster_workers, owned_pids
from tests.serving._support import cluster_markers, kill_cluster


def _titled(title: str, *extra: str) -> subprocess.Popen:
    """A process whose argv[0] is ``title`` (as Ray's setproctitle leaves it), plus ``extra`` arguments."""
    args = " ".join(f"'{a}'" for a in extra)
    return subprocess.Popen(["bash", "-c", f"exec -a '{title}' sleep 60 {args}" if not extra else
                             f"exec -a '{title}' {sys.executable} -c 'import time; time.sleep(60)' {args}"])


def _alive(p: subprocess.Popen) -> bool:
    return p.poll() is None


def _wait_dead(p: subprocess.Popen, timeout_s: float = 10.0) -> bool:
    try:
        p.wait(timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def _wait_argv(pid: int, needle: str, timeout_s: float = 10.0) -> None:
    """Until ``pid``'s command line shows ``needle`` (bash's exec happens a moment after Popen returns)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never showed {needle!r}")


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:  # only what this test started
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_serving_teardown_kills_its_cluster_and_spares_a_process_on_its_port(tmp_path, procs):
    """A cluster whose start failed because another process held its port must not kill that process."""
    home = tmp_path / "amsv-home"
    port = 6391
    # someone else's GCS on "our" port, and someone else's Ray worker
    foreign_gcs = _titled("gcs_server", f"--gcs_server_port={port}", f"127.0.0.1:{port} ")
    foreign_worker = _titled("ray::ServeReplica:other:app")
    # our cluster: a process naming our home, and its worker child that no longer names it
    ours = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(['bash', '-c', "
                             "\"exec -a 'ray::ServeReplica:ours' sleep 60\"]); time.sleep(60)", str(home)])
    procs += [foreign_gcs, foreign_worker, ours]
    for p, needle in ((foreign_gcs, f":{port} "), (foreign_worker, "ray::ServeReplica"), (ours, str(home))):
        _wait_argv(p.pid, needle)
    deadline = time.monotonic() + 10
    while not cluster_workers([str(home)], "ray::ServeReplica") and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = cluster_workers([str(home)], "ray::ServeReplica")

    killed = kill_cluster(cluster_markers(home))

    assert set(killed) == {ours.pid, child}
    assert _wait_dead(ours)
    assert _alive(foreign_gcs) and _alive(foreign_worker), "teardown killed processes of another cluster"


def test_cluster_workers_are_only_those_under_the_clusters_own_processes(tmp_path, procs):
    """The fault tests kill a Train worker: only one of their own cluster, never the first one on the machine."""
    marker = str(tmp_path / "ray-temp")
    foreign = _titled("ray::RayTrainWorker.__init__")
    raylet = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['bash', '-c', "
                               "\"exec -a 'ray::RayTrainWorker.train_fn' sleep 60\"]); time.sleep(60)", f"--temp_dir={marker}"])
    procs += [foreign, raylet]
    _wait_argv(foreign.pid, "ray::RayTrainWorker")
    deadline = time.monotonic() + 10
    while not (mine := cluster_workers([marker], "ray::RayTrainWorker")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(mine) == 1 and foreign.pid not in mine
    assert raylet.pid in owned_pids([marker]) and foreign.pid not in owned_pids([marker])
    assert cluster_workers([], "ray::RayTrainWorker") == [], "no markers must mean no processes, never all of them"


def test_session_ports_come_from_the_environment_or_are_free():
    """tests/conftest.py: the session cluster's ports are the env's when set, else free ones; never 6393/8293/8093."""
    code = ("import os, tests.conftest; print(os.environ['AIMASS_RAY_PORT'], os.environ['AIMASS_RAY_DASHBOARD_PORT'], "
            "os.environ['AIMASS_SERVE_PORT'])")
    env = {k: v for k, v in os.environ.items() if k not in ("AIMASS_RAY_PORT", "AIMASS_RAY_DASHBOARD_PORT", "AIMASS_SERVE_PORT")}
    root = str(Path(__file__).resolve().parents[2])
    free = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stderr
    ports = [int(p) for p in free.stdout.split()]
    assert len(set(ports)) == 3 and not {6393, 8293, 8093} & set(ports)
    given = subprocess.run([sys.executable, "-c", code], env={**env, "AIMASS_RAY_PORT": "7001", "AIMASS_RAY_DASHBOARD_PORT": "7002",
                                                               "AIMASS_SERVE_PORT": "7003"}, cwd=root, capture_output=True, text=True,
                           timeout=60)
    assert given.stdout.split() == ["7001", "7002", "7003"], given.stderr


class _Server:
    """A loopback HTTP server whose answer each test sets: (status, body)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.answer: tuple[int, bytes] = (200, b'{"model_version": "1"}')
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                code, body = outer.answer
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _loop(server, payload=None, **kw):
    from tests.serving._support import Cluster, LoadLoop

    return LoadLoop(Cluster(Path("/nonexistent"), "", server.port, ""), "t", "/infer", payload or {"x": 1}, pause_s=0.001, **kw)


def test_load_loop_counts_a_200_without_an_answer_as_a_failure_and_keeps_going(server):
    server.answer = (200, b'{"no_version": true}')
    with _loop(server) as load:
        load.wait_for(10, timeout_s=30)
    assert load.failed_after_retry == len(load.final) >= 10 and load.availability == 0
    assert "KeyError" in load.errors[0]
    server.answer = (200, b"not json")
    with _loop(server) as load:
        load.wait_for(5, timeout_s=30)
    assert load.failed_after_retry >= 5 and "bad body" in load.errors[0]


def test_load_loop_wait_for_raises_on_timeout_and_when_the_loop_dies(server):
    with _loop(server) as load:
        with pytest.raises(AssertionError, match="requests answered in"):
            load.wait_for(10**9, timeout_s=0.5)
    # a payload the client cannot send ends the thread: the test hears of it, it does not pass on what came before
    with pytest.raises(AssertionError, match="crashed"):
        with _loop(server, payload={"x": object()}) as load:
            load.wait_for(5, timeout_s=30)
    with pytest.raises(AssertionError, match="stopped after"):
        with _loop(server, max_s=0.2) as load:
            load.wait_for(10**9, timeout_s=30)


def test_load_loop_counts_answers_since_a_mark(server):
    with _loop(server) as load:
        load.wait_for(5, timeout_s=30)
        mark = load.mark()
        load.wait_for(mark + 7, timeout_s=30)
        assert load.answered_since(mark) >= 7
    assert load.failed_after_retry == 0 and set(load.versions) == {"1"}
