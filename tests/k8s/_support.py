"""Shared test data and helpers for tests/k8s and tests/api."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.ports import distinct_free_ports, free_port, free_port_range
from tests.procs import owned_pids

TINY_PIPELINE = """\
apiVersion: aimass.io/v1alpha1
kind: Pipeline
metadata:
  name: tiny
  labels: {team: test}
spec:
  seed: 7
  steps:
    - name: data
      type: data
      config: {source: "builtin:iris"}
    - name: train
      type: train
      dependsOn: [data]
      config: {model: mlp, epochs: 1, numWorkers: 3}
"""

# Line 13 has the unknown field: errors must point at it.
BAD_PIPELINE = """\
apiVersion: aimass.io/v1alpha1
kind: Pipeline
metadata:
  name: bad
spec:
  steps:
    - name: data
      type: data
      config: {source: "builtin:iris"}
    - name: train
      type: train
      dependsOn: [data]
      confg: {model: mlp}
"""

RUN_ID = "20250101-120000-abc123"


def tiny_spec(text: str = TINY_PIPELINE, source: str = "tiny.yaml"):
    from aimass.spec import parse_pipeline

    return parse_pipeline(text, source=source)


@dataclass
class LocalRay:
    """A Ray head with token auth that this test session started (and alone stops)."""

    address: str  # dashboard URL
    gcs_port: int
    token_file: Path
    temp_dir: Path
    proc: subprocess.Popen

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


def start_local_ray(gcs_port: int | None = None, dashboard_port: int | None = None, num_cpus: int = 2, timeout_s: float = 120.0) -> LocalRay:
    """`ray start --head --block` in its own session, on explicit free ports, with RAY_AUTH_MODE=token.

    Ports default to free ones (a given port is used when free, else another free one).
    `--block` keeps the head a child of ours, so it is stopped by its own process group rather
    than `ray stop`, which would also stop other Ray clusters on the machine.
    """
    tmp = Path(tempfile.mkdtemp(prefix="akr", dir="/tmp"))  # short: Ray's unix sockets live under it
    token_file = tmp / "token"
    token_file.write_text(secrets.token_hex(24))
    token_file.chmod(0o600)
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": venv_bin + os.pathsep + env.get("PATH", ""), "PYTHONUNBUFFERED": "1"})
    env.pop("RAY_ADDRESS", None)
    gcs = free_port(gcs_port)
    dash = free_port(dashboard_port) if dashboard_port else distinct_free_ports(1, {gcs})[0]
    singles = distinct_free_ports(7, {gcs, dash})
    client, agent_http, agent_grpc, metrics, runtime_env, node_manager, object_manager = singles
    worker_lo = free_port_range(201, {gcs, dash, *singles})
    cmd = [str(Path(venv_bin) / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--num-cpus={num_cpus}",
           "--disable-usage-stats", f"--temp-dir={tmp / 't'}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_manager}",
           f"--object-manager-port={object_manager}", f"--min-worker-port={worker_lo}", f"--max-worker-port={worker_lo + 200}"]
    log = open(tmp / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: {(tmp / 'ray-start.log').read_text()[-3000:]}")
        try:
            r = httpx.get(url + "/api/jobs/", headers=headers, timeout=2)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_local_ray(LocalRay(url, gcs, token_file, tmp, proc))
            raise RuntimeError(f"the Ray dashboard at {url} did not come up: {(tmp / 'ray-start.log').read_text()[-3000:]}")
        time.sleep(1.0)
    return LocalRay(url, gcs, token_file, tmp, proc)


def stop_local_ray(cluster: LocalRay, timeout_s: float = 45.0) -> None:
    # SIGTERM to `ray start --block` alone: it drains and stops its own processes (a few seconds);
    # signalling the whole group at once makes it wait for the full drain timeout instead.
    try:
        cluster.proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        cluster.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(cluster.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cluster.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (left := sorted(owned_pids([str(cluster.temp_dir)]))) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # stragglers of *our* cluster only, by pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
