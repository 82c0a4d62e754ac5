"""``stop_local_cluster`` (``aimass down``) stops every process of its cluster and nothing else, without Ray:
stand-in processes shaped like Ray's (a daemon naming the temp dir, a child that renamed itself, a Ray
Client server naming the GCS address)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil

from aimass.orchestrator import ray_runtime as rr

_SLEEPER = "import subprocess, sys, time\nif len(sys.argv) > 1 and sys.argv[1] == 'parent':\n" \
           "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\ntime.sleep(120)\n"


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SLEEPER, *args], start_new_session=True)


def _children(pid: int, timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = [c.pid for c in psutil.Process(pid).children()]
        if kids:
            return kids
        time.sleep(0.05)
    raise AssertionError("the stand-in daemon did not start its child")


def test_down_stops_daemons_their_renamed_children_and_a_client_server(tmp_path):
    home, other = tmp_path / "home", tmp_path / "other"
    home.mkdir()
    other.mkdir()
    address = "127.0.0.1:46391"
    rr.local_cluster_file(home).write_text(json.dumps({"address": address}))
    daemon = _spawn("parent", f"--temp-dir={rr.ray_temp_dir(home)}")  # as the raylet: names the temp dir
    client = _spawn("-m", "ray.util.client.server", f"--address={address}", "--port=10001")
    foreign_client = _spawn("-m", "ray.util.client.server", "--address=127.0.0.1:46392", "--port=10002")
    foreign = _spawn(f"--temp-dir={rr.ray_temp_dir(other)}")  # another home's cluster
    procs = [daemon, client, foreign_client, foreign]
    try:
        (child,) = _children(daemon.pid)  # as an agent or worker: its command line names nothing
        assert rr.stop_local_cluster(home, timeout_s=5) is True
        for p in (daemon, client):
            p.wait(timeout=10)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        assert foreign.poll() is None and foreign_client.poll() is None  # other clusters' processes live on
        assert not rr.local_cluster_file(home).exists()
        assert rr.stop_local_cluster(home) is False  # nothing left to stop
        assert rr.cluster_pids(home) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
