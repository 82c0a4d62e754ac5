"""The local cluster AI Mass starts: every socket it listens on is on loopback, it runs no Ray Client
server, two of them coexist on one host, and ``aimass down`` stops every process it started.

One real cluster (``start_local_cluster``), with Serve, a serving replica and a plain actor running, so
the sockets of the raylet's workers, Serve's proxy and the direct-ingress port are there to be counted.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import aimass_bin, cli_env
from tests.ports import distinct_free_ports

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _listening(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process) of every listening TCP socket and bound UDP socket of ``pids``."""
    out = []
    for c in psutil.net_connections("inet"):
        if c.pid not in pids or not c.laddr:
            continue
        if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
            continue
        try:
            name = psutil.Process(c.pid).name()
        except psutil.Error:
            name = "?"
        out.append((c.laddr.ip, c.laddr.port, c.pid, name))
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _client_servers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "ray.util.client.server" in (p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def two_homes():
    homes = [Path(tempfile.mkdtemp(prefix="amlc-", dir="/tmp")) for _ in range(2)]
    yield homes
    from aimass.orchestrator import ray_runtime as rr

    for h in homes:
        rr.stop_local_cluster(h, timeout_s=5)
        shutil.rmtree(rr.ray_temp_dir(h), ignore_errors=True)
        shutil.rmtree(h, ignore_errors=True)


def test_local_cluster_listens_on_loopback_only_and_down_stops_it_all(two_homes, monkeypatch):
    import ray
    from ray import serve

    from aimass.orchestrator import ray_runtime as rr

    home, other = two_homes
    gcs, dash, gcs2, dash2, http = distinct_free_ports(5, set())
    for k in ("RAY_ADDRESS", "AIMASS_RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    clients_before = {p.pid for p in _client_servers()}
    if ray.is_initialized():
        ray.shutdown()
    rr.use_cluster_token(home)
    address = rr.start_local_cluster(home, num_cpus=2, port=gcs, dashboard_port=dash)
    try:
        rr.connect(address, logging_level="ERROR", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": http})

        @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1})
        class Hello:
            def __call__(self, request) -> str:
                return "hello"

        serve.run(Hello.bind(), name="hello", route_prefix="/hello")

        @ray.remote(num_cpus=0.1)
        class Worker:
            def ping(self) -> int:
                return os.getpid()

        actor = Worker.remote()
        worker_pid = ray.get(actor.ping.remote())
        import httpx

        assert httpx.get(f"http://127.0.0.1:{http}/hello", timeout=30).text == "hello"

        pids = set(rr.cluster_pids(home))
        assert worker_pid in pids  # a worker renames itself (ray::Worker): found as the raylet's child
        sockets = _listening(pids)
        ports = {port for _, port, _, _ in sockets}
        assert {gcs, dash, http} <= ports, sockets
        exposed = [s for s in sockets if not _is_loopback(s[0])]
        # The one socket Ray 2.60 gives no way to place: each Serve replica's inter-deployment gRPC server,
        # bound to [::]:0 in ray/serve/_private/replica.py (Replica._on_initialized), behind Ray's token
        # auth. Anything else beyond loopback fails here.
        grpc_of_replicas = [s for s in exposed if s[3].startswith("ray::ServeReplica")]
        assert exposed == grpc_of_replicas, f"listening beyond loopback: {exposed}"
        assert len({pid for _, _, pid, _ in grpc_of_replicas}) == len(grpc_of_replicas) <= 2, exposed  # one per replica
        assert all(not 30000 <= port <= 31000 for _, port, _, _ in grpc_of_replicas)  # not the direct-ingress HTTP port
        # no Ray Client server: AI Mass never connects through it, and it would take :10001 from everyone
        assert {p.pid for p in _client_servers()} - clients_before == set()
        assert all("ray.util.client.server" not in " ".join(psutil.Process(p).cmdline()) for p in pids if psutil.pid_exists(p))

        # a second cluster on the same host starts beside it (no shared fixed port)
        rr.use_cluster_token(other)
        second = rr.start_local_cluster(other, num_cpus=1, port=gcs2, dashboard_port=dash2)
        assert second == f"127.0.0.1:{gcs2}"
        other_pids = set(rr.cluster_pids(other))
        assert other_pids and not other_pids & pids
        assert [s for s in _listening(other_pids) if not _is_loopback(s[0])] == []  # no Serve there
    finally:
        ray.shutdown()
        from ray.serve.context import _set_global_client

        _set_global_client(None)  # Serve caches its client per process: the next test's cluster has its own

    # `aimass down` of the first home stops every process of the first cluster, and only those
    r = subprocess.run([aimass_bin(), "down"], env=cli_env(AIMASS_HOME=str(home)), capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and "stopped the local Ray cluster" in r.stdout, r.stdout + r.stderr
    deadline = time.monotonic() + 20
    while (alive := [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive == [], [" ".join(psutil.Process(p).cmdline())[:120] for p in alive if psutil.pid_exists(p)]
    assert _listening(pids) == []
    assert rr.local_cluster_address(home) is None
    assert all(psutil.pid_exists(p) for p in other_pids)  # the other cluster is untouched
    assert rr.local_cluster_address(other) == f"127.0.0.1:{gcs2}"
