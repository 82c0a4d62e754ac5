"""Connecting to Ray: an existing cluster, or a persistent local one that AI Mass starts itself.

The local cluster outlives the command that started it (so ``aimass serve`` leaves a model serving
for ``aimass predict``), listens on loopback only, on explicit ports (6379 is often Redis), and has
Ray's token authentication on. ``aimass down`` stops it: every process it started, and nothing else.

Loopback only, and how: ``ray start --node-ip-address=127.0.0.1`` is not enough. Ray rewrites a
loopback node address to the host's routable one, and its gRPC servers (GCS, raylet, object manager,
every worker) listen on all interfaces unless the node address *is* 127.0.0.1; the runtime-env agent
and the dashboard agent then listen on the routable address too. Ray keeps a loopback node address on
macOS and Windows, where multi-node clusters are off; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` turns
that single-node mode on here, so every component listens on 127.0.0.1. Ray Client's server (a proxy
on :10001 by default, which a second cluster on the host could not bind) is not started at all: AI
Mass never connects through Ray Client. ``AIMASS_RAY_NODE_IP`` set to another address gives the old
behaviour (Ray's own rules: reachable from the network), for a cluster that other hosts must join.

One socket Ray 2.60 does not let us place: each Ray Serve replica's inter-deployment gRPC server is
bound to ``[::]:0`` in ``ray/serve/_private/replica.py`` (``Replica._on_initialized``), with no setting
for its host. It takes a random port on every interface, and answers only calls that carry the
cluster's Ray token (Serve attaches Ray's auth interceptor; token auth is on here). A host firewall
that drops inbound connections closes it; ``tests/integration/test_local_cluster.py`` checks that
it is the only exception.

Processes that connect to such a cluster (``ray.init``) use :func:`connect`: Ray would otherwise rewrite
the 127.0.0.1 of its address to the host's routable one, where nothing listens.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aimass.exceptions import ExecutorError

__all__ = ["ensure_ray", "local_cluster_file", "start_local_cluster", "stop_local_cluster", "local_cluster_address",
           "DEFAULT_GCS_PORT", "DEFAULT_DASHBOARD_PORT", "DEFAULT_NODE_IP", "cluster_pids", "connect", "runtime_env_vars", "RAY_ENV_DEFAULTS", "SERVE_ENV_DEFAULTS"]

# Ray Train v2 blocks each report() for up to one controller poll (2 s by default): on short epochs
# that is most of the time. A 0.1 s poll costs the controller little CPU and keeps reports cheap.
#
# Ray Serve's throughput mode (Ray >= 2.55): each application's ingress replica also answers HTTP on a
# port of its own ("direct ingress", no hop through the proxy actor), deployments call each other over
# gRPC, and user code and routers share the replica's event loop. On 2 vCPUs it takes an empty Serve
# request from ~6 ms to ~0.3 ms (docs/benchmarks.md#serving). The proxy keeps serving every route on
# the configured port. A replica that stops keeps its direct port open for the draining period: 2 s
# here (Serve's 30 s default is for cloud load balancers to deregister it; our clients fall back to the
# proxy at once).
SERVE_ENV_DEFAULTS = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
RAY_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", **SERVE_ENV_DEFAULTS}

DEFAULT_GCS_PORT = int(os.environ.get("AIMASS_RAY_PORT", "6380"))
DEFAULT_DASHBOARD_PORT = int(os.environ.get("AIMASS_RAY_DASHBOARD_PORT", "8265"))
LOOPBACK = "127.0.0.1"
# Where the local cluster listens: loopback unless the user sets another node address.
DEFAULT_NODE_IP = os.environ.get("AIMASS_RAY_NODE_IP") or LOOPBACK

# `ray start`, minus Ray Client's server. Ray starts that server whenever the `grpc` package imports
# (scripts.start: "has port, has client"), with no flag to say no; it listens on :10001 whatever the
# cluster's ports, and its command line does not name the cluster's temp dir. Making Ray's own
# dependency check answer "not installed" is the one switch that leaves it off.
_RAY_START = (
    "import sys\n"
    "from ray.scripts import scripts\n"
    "scripts.get_ray_client_dependency_error = lambda: ImportError('Ray Client is not used by AI Mass')\n"
    "sys.argv[0] = 'ray'\n"
    "sys.exit(scripts.main())\n"
)


def local_cluster_file(home: Path) -> Path:
    return home / "ray-cluster.json"


def token_file(home: Path) -> Path:
    """The token of the local cluster: one per AIMASS_HOME, readable by its owner only."""
    f = home / "ray-auth-token"
    if not f.exists() or not f.read_text().strip():
        import secrets

        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return f


def use_cluster_token(home: Path) -> None:
    """Point this process's Ray client at the token of ``home``'s local cluster.

    Ray reads the auth mode and the token once and caches them, so a process that talks to several
    local clusters in turn (a test session, a benchmark) must refresh the cache before each ``ray.init``.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file(home))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    # Ray caches the auth mode and the token when it is imported: refresh both for this process.
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except ImportError:  # pragma: no cover - older Ray without token auth
        pass


def _auth_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_file(home))
    env.pop("RAY_AUTH_TOKEN", None)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.update({k: os.environ.get(k, v) for k, v in RAY_ENV_DEFAULTS.items()})
    return env


def local_cluster_address(home: Path) -> str | None:
    """Address of the local cluster we started earlier, if it still answers."""
    f = local_cluster_file(home)
    if not f.exists():
        return None
    info = json.loads(f.read_text())
    import socket

    host, port = info["address"].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return info["address"]
    except OSError:
        f.unlink(missing_ok=True)
        return None


def start_local_cluster(home: Path, num_cpus: int | None = None, num_gpus: int | None = None,
                        port: int = DEFAULT_GCS_PORT, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
                        node_ip: str | None = None) -> str:
    """Start a persistent local Ray head with token auth; returns its address.

    Every socket it listens on is on 127.0.0.1 (GCS, raylet, object manager, workers, dashboard and
    its agent, metrics export, runtime-env agent), and no Ray Client server runs. ``node_ip`` (default
    ``AIMASS_RAY_NODE_IP``, else 127.0.0.1) set to another address lets Ray listen on the network.
    """
    existing = local_cluster_address(home)
    if existing:
        return existing
    node_ip = node_ip or DEFAULT_NODE_IP
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", _RAY_START, "start", "--head", f"--port={port}", f"--node-ip-address={node_ip}",
           f"--dashboard-port={dashboard_port}", f"--dashboard-host={LOOPBACK}", "--disable-usage-stats",
           f"--temp-dir={ray_temp_dir(home)}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    env = _auth_env(home)
    if _is_loopback(node_ip):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keeps the node address on loopback (see the module doc)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise ExecutorError("could not start the local Ray cluster", got=proc.stderr[-2000:],
                            fix=f"Is port {port} free? Set AIMASS_RAY_PORT to another port, or `aimass down` first.")
    address = f"{LOOPBACK if _is_loopback(node_ip) else node_ip}:{port}"
    local_cluster_file(home).write_text(json.dumps({"address": address, "dashboard": f"http://{LOOPBACK}:{dashboard_port}",
                                                   "node_ip": node_ip, "started": time.time()}))
    return address


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ray_temp_dir(home: Path) -> str:
    """A short, per-home Ray temp dir (Unix socket paths are limited to ~107 bytes)."""
    import hashlib

    return f"/tmp/aimass-ray-{hashlib.sha256(str(home).encode()).hexdigest()[:10]}"


def _cluster_processes(home: Path) -> list:
    """Every process of ``home``'s cluster that is still running.

    Ray's own daemons (GCS, raylet, dashboard, monitor, log monitor) name the cluster's temp dir on
    their command line; the agents and workers that the raylet starts rename themselves (``ray::...``)
    and are found as their descendants. A Ray Client server (started by older AI Mass, or by hand)
    names the GCS address.
    """
    import psutil

    marker = ray_temp_dir(home)
    address = None
    f = local_cluster_file(home)
    if f.exists():
        try:
            address = json.loads(f.read_text()).get("address")
        except (OSError, ValueError):
            address = None
    procs: dict[int, Any] = {}
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            ours = any(marker in part for part in cmd) or (
                address is not None and "ray.util.client.server" in cmd and f"--address={address}" in cmd)
            if ours and p.pid != me:
                procs[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in list(procs.values()):
        try:
            for c in p.children(recursive=True):
                if c.pid != me:
                    procs.setdefault(c.pid, c)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(procs.values())


def cluster_pids(home: Path) -> list[int]:
    """Pids of the processes of ``home``'s local cluster (what ``aimass down`` stops)."""
    return sorted(p.pid for p in _cluster_processes(home))


def stop_local_cluster(home: Path, timeout_s: float = 15.0) -> bool:
    """Stop the local cluster of this AIMASS_HOME only (``ray stop`` would stop every Ray on the machine).

    Every process the cluster started goes: Ray's daemons, the agents and workers under the raylet,
    and a Ray Client server if one runs. They are collected before any is signalled, since a child
    whose parent has gone is no longer found as its descendant.
    """
    import psutil

    f = local_cluster_file(home)
    procs = _cluster_processes(home)
    if not f.exists() and not procs:
        return False
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    f.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def _loopback_node(active: bool = True) -> Iterator[None]:
    """While connecting this process to a loopback cluster: keep 127.0.0.1 as the address of this node.

    Ray rewrites a loopback address (the cluster's, and this process's own node address) to the host's
    routable one unless multi-node clusters are off (``ray_constants.ENABLE_RAY_CLUSTER``, read at call
    time, which is what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets at import). The GCS of a loopback
    cluster listens on 127.0.0.1 alone, so the rewritten address would not answer. Restored afterwards:
    a later connection of this process to a cluster on another host needs the routable address.
    """
    if not active:
        yield
        return
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def connect(address: str, **init_kwargs: Any) -> None:
    """``ray.init(address=...)`` that also reaches a cluster listening on loopback only (see :func:`_loopback_node`).

    Example:
        >>> connect(start_local_cluster(aimass_home()), logging_level="ERROR")   # doctest: +SKIP
    """
    import ray

    host = address.rsplit(":", 1)[0].strip("[]")
    with _loopback_node(_is_loopback(host)):
        ray.init(address=address, **init_kwargs)


def runtime_env_vars() -> dict[str, str]:
    """Environment every Ray worker of an AI Mass job gets: our settings, credentials, Train tuning."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("AIMASS_", "AWS_", "MLFLOW_"))}
    for k, v in RAY_ENV_DEFAULTS.items():
        env.setdefault(k, os.environ.get(k, v))
    return env


def ensure_ray(address: str | None = None, *, home: Path | None = None, persistent: bool = True,
               num_cpus: int | None = None) -> str:
    """Make sure this process is connected to Ray; returns a description of the cluster.

    ``address`` (or ``AIMASS_RAY_ADDRESS``/``RAY_ADDRESS``) connects to an existing cluster. Without
    one, a persistent local cluster is started (or reused) when ``persistent``; otherwise an
    in-process cluster that ends with this process.
    """
    import ray

    if ray.is_initialized():
        return "connected"
    address = address or os.environ.get("AIMASS_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": runtime_env_vars()}
    if not address and persistent:
        from aimass.settings import aimass_home

        home = home or aimass_home()
        use_cluster_token(home)  # before anything in Ray reads the auth mode
        address = start_local_cluster(home, num_cpus=num_cpus)
    if address:
        # Ray's own helpers (e.g. Train's placement-group cleaner) look the cluster up by RAY_ADDRESS;
        # without it they fail when several Ray instances run on one machine.
        runtime_env["env_vars"].setdefault("RAY_ADDRESS", address)
        connect(address, runtime_env=runtime_env, log_to_driver=True, logging_level="WARNING")
        return address
    for k, v in RAY_ENV_DEFAULTS.items():  # the in-process cluster's raylet starts from this environment
        os.environ.setdefault(k, v)
    # An in-process cluster is a local cluster AI Mass starts, too: loopback, as the persistent one.
    loopback = _is_loopback(DEFAULT_NODE_IP)
    with _loopback_node(loopback):
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, logging_level="WARNING",
                 _node_ip_address=DEFAULT_NODE_IP)
    return "local (in-process)"
