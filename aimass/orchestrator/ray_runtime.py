"""Connecting to Ray: an existing cluster, or a persistent local one that AI Mass starts itself.

The local cluster outlives the command that started it (so ``aimass serve`` leaves a model serving
for ``aimass predict``), listens on loopback only, on explicit ports (6379 is often Redis), and has
Ray's token authentication on. ``aimass down`` stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from aimass.exceptions import ExecutorError

__all__ = ["ensure_ray", "local_cluster_file", "start_local_cluster", "stop_local_cluster", "local_cluster_address",
           "DEFAULT_GCS_PORT", "DEFAULT_DASHBOARD_PORT", "runtime_env_vars", "RAY_ENV_DEFAULTS", "SERVE_ENV_DEFAULTS"]

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


def local_cluster_file(home: Path) -> Path:
    return home / "ray-cluster.json"


def _ray_bin() -> str:
    cand = Path(sys.executable).with_name("ray")
    return str(cand) if cand.exists() else (shutil.which("ray") or "ray")


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
                        port: int = DEFAULT_GCS_PORT, dashboard_port: int = DEFAULT_DASHBOARD_PORT) -> str:
    """Start a persistent local Ray head on loopback with token auth; returns its address."""
    existing = local_cluster_address(home)
    if existing:
        return existing
    home.mkdir(parents=True, exist_ok=True)
    cmd = [_ray_bin(), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
           f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
           f"--temp-dir={ray_temp_dir(home)}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_auth_env(home), timeout=120)
    if proc.returncode != 0:
        raise ExecutorError("could not start the local Ray cluster", got=proc.stderr[-2000:],
                            fix=f"Is port {port} free? Set AIMASS_RAY_PORT to another port, or `aimass down` first.")
    address = f"127.0.0.1:{port}"
    local_cluster_file(home).write_text(json.dumps({"address": address, "dashboard": f"http://127.0.0.1:{dashboard_port}",
                                                   "started": time.time()}))
    return address


def ray_temp_dir(home: Path) -> str:
    """A short, per-home Ray temp dir (Unix socket paths are limited to ~107 bytes)."""
    import hashlib

    return f"/tmp/aimass-ray-{hashlib.sha256(str(home).encode()).hexdigest()[:10]}"


def _cluster_processes(home: Path) -> list:
    import psutil

    marker = ray_temp_dir(home)
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return procs


def stop_local_cluster(home: Path, timeout_s: float = 15.0) -> bool:
    """Stop the local cluster of this AIMASS_HOME only (``ray stop`` would stop every Ray on the machine)."""
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
    f.unlink(missing_ok=True)
    return True


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
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level="WARNING")
        return address
    for k, v in RAY_ENV_DEFAULTS.items():  # the in-process cluster's raylet starts from this environment
        os.environ.setdefault(k, v)
    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, logging_level="WARNING")
    return "local (in-process)"
