"""``aimass doctor``: check the machine and the configuration before a run, one named check at a time.

Each check returns a :class:`Check` (``ok``, ``warn`` or ``fail``) with what it found and, when something
is wrong, the one thing to do about it. Checks never start Ray, never import mlflow and never wait long:
every network probe has its own timeout (a few seconds at most), the checks run concurrently, and
:func:`run_checks` answers within its deadline even when a server does not answer at all, naming the
check that did not finish.

Example:
    >>> from aimass.diagnostics import run_checks
    >>> report = run_checks()                               # doctest: +SKIP
    >>> [c.name for c in report if c.status == "fail"]      # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Check", "CHECKS", "run_checks", "OK", "WARN", "FAIL"]

OK, WARN, FAIL = "ok", "warn", "fail"

# Each network probe waits at most this long: the whole doctor stays well under 10 s with a server down.
PROBE_TIMEOUT_S = 1.5
# What `aimass doctor` gives all checks together before naming the ones that did not finish.
DEADLINE_S = 5.0

GiB = 1024**3
KEY_PACKAGES = ("ray", "torch", "mlflow", "pydantic", "typer", "numpy")


@dataclass
class Check:
    """The result of one check.

    Attributes:
        name: short, stable id (``ports``, ``tracking``, ...), used by ``--output json`` and the tests.
        status: ``ok``, ``warn`` (works, but worth knowing) or ``fail`` (a run would fail or misbehave).
        detail: what was found, in one line.
        fix: what to do, when ``status`` is not ``ok``.
    """

    name: str
    status: str
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- helpers ---------------------------------------------------------------------------------------------------
def _settings() -> Any:
    from aimass.settings import Settings

    return Settings.load()


def _tcp(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``host:port`` accepts a TCP connection within the timeout, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something could listen on ``host:port`` now (a socket only in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _holder(port: int) -> str:
    """`` (pid N, name)`` of the process listening on ``port`` when this user may see it, else ``""``."""
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                return f" (pid {c.pid}, {psutil.Process(c.pid).name()})"
    except Exception:  # noqa: BLE001 - not allowed to see other users' sockets: no name then
        pass
    return ""


def _redact(uri: str) -> str:
    """The URI without its password."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return uri


def _existing_parent(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _local_cluster(settings: Any) -> tuple[dict[str, Any] | None, bool]:
    """(the record of this AIMASS_HOME's local cluster or None, whether its GCS answers). Changes nothing."""
    from aimass.orchestrator.ray_runtime import local_cluster_file

    f = local_cluster_file(Path(settings.home))
    try:
        info = json.loads(f.read_text())
        host, port = info["address"].rsplit(":", 1)
    except (OSError, ValueError, KeyError, AttributeError):
        return None, False
    return info, _tcp(host, int(port), timeout_s=1.0) is None


def _cluster_pids(settings: Any) -> list[int]:
    """Processes of this AIMASS_HOME's local cluster (their command line names its Ray temp dir)."""
    import psutil

    from aimass.orchestrator.ray_runtime import ray_temp_dir

    marker, me = ray_temp_dir(Path(settings.home)), os.getpid()
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["pid"] != me and any(marker in part for part in (p.info["cmdline"] or [])):
                pids.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _cluster_ports() -> dict[str, int]:
    """The embedded cluster's fixed ports, read now (tests and users change them through the environment)."""
    return {"Ray GCS": int(os.environ.get("AIMASS_RAY_PORT", "6380")),
            "Ray dashboard": int(os.environ.get("AIMASS_RAY_DASHBOARD_PORT", "8265"))}


# -- the checks -----------------------------------------------------------------------------------------------
def check_python(version_info: tuple[int, ...] | None = None) -> Check:
    """Python 3.11 or newer."""
    v = tuple(version_info or sys.version_info)[:3]
    text = ".".join(str(x) for x in v)
    if v < (3, 11):
        return Check("python", FAIL, f"Python {text} ({sys.executable}); AI Mass needs 3.11 or newer",
                     "Create the environment with python3.11: `make setup` (PYTHON=python3.11).")
    return Check("python", OK, f"Python {text} ({sys.executable})")


def _pins(constraints: Path | None) -> dict[str, str]:
    if constraints is None:
        constraints = Path(__file__).resolve().parents[1] / "constraints.txt"
    pins: dict[str, str] = {}
    try:
        for line in constraints.read_text().splitlines():
            m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)", line)
            if m:
                pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    except OSError:
        pass
    return pins


def check_packages(names: tuple[str, ...] = KEY_PACKAGES, constraints: Path | None = None) -> Check:
    """The key packages are installed, at the versions ``constraints.txt`` pins (when it is there)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = _pins(constraints)
    found, missing, off = [], [], []
    for n in names:
        try:
            v = version(n)
        except PackageNotFoundError:
            missing.append(n)
            continue
        found.append(f"{n} {v}")
        pin = pins.get(n.lower())
        if pin and v.split("+")[0] != pin.split("+")[0]:
            off.append(f"{n} {v} (constraints.txt pins {pin})")
    if missing:
        return Check("packages", FAIL, f"not installed: {', '.join(missing)}",
                     "Install AI Mass with its lock: `pip install -c constraints.txt -e .` (or `make setup`).")
    if off:
        return Check("packages", WARN, f"versions differ from the lock: {', '.join(off)}",
                     "Reinstall against the lock: `pip install -c constraints.txt -e .`.")
    return Check("packages", OK, ", ".join(found))


def check_torch() -> Check:
    """torch is installed and complete; whether it is a CPU or a CUDA build.

    Read from the installed files (``torch/version.py`` and the compiled extension), not by importing
    torch: an import costs seconds, and a doctor must answer fast on a loaded machine.
    """
    from importlib.util import find_spec

    fix = ("Reinstall it against the lock: `pip install -c constraints.txt --force-reinstall torch==<pinned>` "
           "(the CPU build on machines without a GPU).")
    try:
        spec = find_spec("torch")
    except (ImportError, ValueError) as e:
        return Check("torch", FAIL, f"torch cannot be found: {e}", fix)
    if spec is None or not spec.submodule_search_locations:
        return Check("torch", FAIL, "torch is not installed", fix)
    root = Path(next(iter(spec.submodule_search_locations)))
    try:
        text = (root / "version.py").read_text()
    except OSError:
        return Check("torch", FAIL, f"torch at {root} is incomplete (no version.py): a broken or shadowing install", fix)
    if not any(root.glob("_C*.so")) and not any(root.glob("_C*.pyd")):
        return Check("torch", FAIL, f"torch at {root} is incomplete (no compiled extension _C)", fix)
    version = re.search(r"^__version__\s*(?::[^=]*)?=\s*['\"]([^'\"]+)", text, re.M)
    cuda = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)", text, re.M)
    v = version.group(1) if version else "?"
    return Check("torch", OK, f"torch {v}, {'CUDA ' + cuda.group(1) + ' build' if cuda else 'CPU build'} ({root})")


def _physical_gpus() -> list[str]:
    """NVIDIA GPUs this machine has (the driver's view), without importing torch or CUDA."""
    root = Path("/proc/driver/nvidia/gpus")
    try:
        ids = sorted(p.name for p in root.iterdir())
    except OSError:
        ids = []
    if ids:
        return ids
    smi = shutil.which("nvidia-smi")
    if smi:
        import subprocess

        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
            return [ln for ln in out.stdout.splitlines() if ln.startswith("GPU ")]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def check_gpus() -> Check:
    """GPUs visible to this process (``CUDA_VISIBLE_DEVICES`` applied), and whether torch can use them."""
    gpus = _physical_gpus()
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = len(gpus)
    if cvd is not None:
        wanted = [d.strip() for d in cvd.split(",") if d.strip()]
        visible = 0
        for d in wanted:
            if d.isdigit() and int(d) < len(gpus) or d.startswith(("GPU-", "MIG-")) and gpus:
                visible += 1
            elif d == "-1":
                break
        if wanted and wanted != ["-1"] and visible == 0:
            return Check("gpus", FAIL, f"CUDA_VISIBLE_DEVICES={cvd} names GPUs this machine does not have "
                                       f"({len(gpus)} GPU(s) found)",
                         "Unset CUDA_VISIBLE_DEVICES, or name GPUs that exist (`nvidia-smi -L` lists them).")
    if visible == 0:
        return Check("gpus", OK, "no GPU visible: training and serving run on CPU")
    try:
        from importlib.metadata import version

        tv = version("torch")
    except Exception:  # noqa: BLE001
        tv = ""
    if "+cpu" in tv:
        return Check("gpus", WARN, f"{visible} GPU(s) visible, but torch {tv} is a CPU build: they stay unused",
                     "Install a CUDA build of torch (https://pytorch.org/get-started/locally/), same version as the lock.")
    return Check("gpus", OK, f"{visible} GPU(s) visible")


def check_ports(settings: Any) -> Check:
    """The embedded cluster's ports and Serve's port are free, or held by this AIMASS_HOME's own cluster."""
    ports = {} if settings.ray_address else _cluster_ports()
    ports["Serve HTTP"] = int(settings.serve_http_port)
    env = {"Ray GCS": "AIMASS_RAY_PORT", "Ray dashboard": "AIMASS_RAY_DASHBOARD_PORT", "Serve HTTP": "AIMASS_SERVE_PORT"}
    _, live = _local_cluster(settings)
    taken = [(what, p) for what, p in ports.items() if not _port_free(p)]
    if not taken:
        return Check("ports", OK, "free: " + ", ".join(f"{p} ({w})" for w, p in ports.items()))
    if live:
        return Check("ports", OK, "in use by this AIMASS_HOME's running local cluster: "
                     + ", ".join(f"{p} ({w})" for w, p in taken))
    what = ", ".join(f"{p} ({w}){_holder(p)}" for w, p in taken)
    return Check("ports", FAIL, f"taken by another process: {what}",
                 "Stop what holds them, or choose free ports: " + ", ".join(f"{env[w]}=<port>" for w, _ in taken) + ".")


def check_local_cluster(settings: Any) -> Check:
    """No stale local cluster: a record without a cluster, or processes of a cluster that no longer answers."""
    info, live = _local_cluster(settings)
    pids = _cluster_pids(settings)
    if live:
        return Check("local-cluster", OK, f"running at {info['address']} ({len(pids)} processes); `aimass down` stops it")
    if pids:
        return Check("local-cluster", FAIL, f"{len(pids)} process(es) of an earlier local cluster are still running "
                                            f"(pids {', '.join(map(str, pids[:8]))}) but its GCS does not answer",
                     "Run `aimass down` to stop them (it stops only this AIMASS_HOME's cluster).")
    if info is not None:
        return Check("local-cluster", WARN, f"a stale record of a local cluster at {info.get('address')} (it is gone)",
                     "Run `aimass down` to clear it; `aimass run` starts a new cluster.")
    if settings.ray_address:
        return Check("local-cluster", OK, "not used (AIMASS_RAY_ADDRESS is set)")
    return Check("local-cluster", OK, "none running; `aimass run` starts one")


def check_serve(settings: Any) -> Check:
    """Nothing stale answers on Serve's port: a proxy of another cluster, or an application that is not ready."""
    import httpx

    port = int(settings.serve_http_port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=PROBE_TIMEOUT_S) as c:
            r = c.get("/-/routes")
            routes = r.json() if r.status_code == 200 else None
            if not isinstance(routes, dict):
                return Check("serve", FAIL, f"port {port} answers HTTP {r.status_code}, but not as Ray Serve",
                             "Stop that server, or set AIMASS_SERVE_PORT to a free port.")
            _, live = _local_cluster(settings)
            if not live and not settings.ray_address:
                return Check("serve", FAIL, f"a Ray Serve proxy answers on port {port} ({', '.join(f'{v} at {k}' for k, v in routes.items()) or 'no apps'}) "
                                            "but no local cluster of this AIMASS_HOME is running: a stale serve app of an earlier cluster",
                             "Stop that cluster (`aimass down` with its AIMASS_HOME), or set AIMASS_SERVE_PORT to a free port.")
            headers = {}
            token = Path(settings.serve_token_file or Path(settings.home) / "serve-token").expanduser()
            try:  # our token goes only to our own cluster's proxy (a 401 elsewhere still says "it answers")
                lines = [ln.strip() for ln in token.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
                if lines and live:
                    headers["Authorization"] = f"Bearer {lines[0]}"
            except OSError:
                pass
            stale = []
            for prefix, app in routes.items():
                rr = c.get(prefix.rstrip("/") + "/v2/health/ready", headers=headers)
                if rr.status_code not in (200, 401, 404):
                    stale.append(f"{app} at {prefix} (HTTP {rr.status_code})")
            if stale:
                return Check("serve", WARN, f"application(s) not ready: {', '.join(stale)}",
                             "See `aimass serving status`; remove a stale one with `aimass serving shutdown APP`.")
            return Check("serve", OK, f"Serve on port {port}: {', '.join(f'{v} at {k}' for k, v in routes.items()) or 'no apps'}")
    except httpx.ConnectError:
        return Check("serve", OK, f"nothing serving on port {port}")
    except (httpx.HTTPError, ValueError) as e:
        return Check("serve", FAIL, f"port {port} accepts connections but does not answer HTTP ({type(e).__name__})",
                     "Stop what holds it, or set AIMASS_SERVE_PORT to a free port.")


def check_tracking(settings: Any) -> Check:
    """The tracking URI is reachable: SQLite's directory is writable, a database or an MLflow server answers."""
    uri = settings.tracking_uri
    shown = _redact(uri)
    fix = "Start it, or point AIMASS_TRACKING_URI elsewhere (unset: MLflow on SQLite under $AIMASS_HOME)."
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme in ("sqlite", "file", ""):
        if scheme == "sqlite":  # sqlite:///relative.db or sqlite:////absolute.db
            path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        else:
            path = Path(parts.path if scheme else uri)
        base = _existing_parent(path if scheme == "file" else path.parent)
        if not os.access(base, os.W_OK):
            return Check("tracking", FAIL, f"{shown}: {base} is not writable",
                         "Set AIMASS_HOME (or AIMASS_TRACKING_URI) to a writable place.")
        return Check("tracking", OK, f"{shown} (local, writable)")
    if scheme in ("postgresql", "postgres", "mysql", "mssql"):
        port = parts.port or {"mysql": 3306, "mssql": 1433}.get(scheme, 5432)
        why = _tcp(parts.hostname or "localhost", port)
        if why:
            return Check("tracking", FAIL, f"{shown}: cannot reach the database at {parts.hostname}:{port} ({why})", fix)
        return Check("tracking", OK, f"{shown}: the database port answers")
    if scheme in ("http", "https"):
        import httpx

        try:
            r = httpx.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as e:
            return Check("tracking", FAIL, f"{shown}: the MLflow server does not answer ({type(e).__name__})", fix)
        if r.status_code in (401, 403):
            return Check("tracking", WARN, f"{shown}: the server asks for credentials (HTTP {r.status_code})",
                         "Set MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.")
        if r.status_code >= 400:
            return Check("tracking", FAIL, f"{shown}: /health answered HTTP {r.status_code}", fix)
        return Check("tracking", OK, f"{shown}: the MLflow server answers")
    return Check("tracking", WARN, f"{shown}: scheme {scheme!r} is not probed", None)


def check_artifacts(settings: Any) -> Check:
    """The artifact store is usable: a writable directory, or an S3 bucket reachable with credentials."""
    root = settings.artifact_root
    if not root.startswith("s3://"):
        path = Path(root[len("file://"):] if root.startswith("file://") else root)
        base = _existing_parent(path)
        if not os.access(base, os.W_OK):
            return Check("artifacts", FAIL, f"{root}: {base} is not writable",
                         "Set AIMASS_ARTIFACT_ROOT (or AIMASS_HOME) to a writable directory or s3://bucket/prefix.")
        return Check("artifacts", OK, f"{root} (local, writable)")
    bucket = root[len("s3://"):].split("/", 1)[0]
    endpoint = settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = endpoint or "AWS S3"
    if endpoint:
        ep = urlsplit(endpoint)
        why = _tcp(ep.hostname or "localhost", ep.port or (443 if ep.scheme == "https" else 80))
        if why:
            return Check("artifacts", FAIL, f"{root}: cannot reach the S3 endpoint {endpoint} ({why})",
                         "Start it, or fix AIMASS_S3_ENDPOINT_URL.")
    from aimass.storage.s3 import s3_client

    try:
        s3_client(endpoint, max_attempts=1, connect_timeout_s=PROBE_TIMEOUT_S, read_timeout_s=PROBE_TIMEOUT_S).head_bucket(Bucket=bucket)
    except Exception as e:  # noqa: BLE001 - botocore's errors, told apart by name (botocore stays in aimass.storage)
        name = type(e).__name__
        response = getattr(e, "response", None)
        code = str((response.get("Error") or {}).get("Code", "")) if isinstance(response, dict) else ""
        if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return Check("artifacts", FAIL, f"{root}: no S3 credentials found",
                         "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE).")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return Check("artifacts", FAIL, f"{root}: {where} refused the credentials ({code})",
                         "Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy.")
        if code in ("404", "NoSuchBucket"):
            return Check("artifacts", FAIL, f"{root}: bucket {bucket!r} does not exist at {where}",
                         "Create the bucket, or fix AIMASS_ARTIFACT_ROOT.")
        return Check("artifacts", FAIL, f"{root}: {where} did not answer ({name}{': ' + code if code else ''})",
                     "Check the endpoint (AIMASS_S3_ENDPOINT_URL) and the network.")
    return Check("artifacts", OK, f"{root}: bucket reachable at {where}")


def check_ray_address(settings: Any) -> Check:
    """The configured Ray cluster (AIMASS_RAY_ADDRESS or RAY_ADDRESS) answers."""
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        return Check("ray-address", OK, "none set: a local cluster is used")
    if address in ("auto", "local"):
        return Check("ray-address", OK, f"{address!r}: Ray looks for a cluster on this machine")
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    default = {"ray": 10001, "http": 8265, "https": 443}.get(parts.scheme, 6379)
    try:
        port = parts.port or default
    except ValueError:
        return Check("ray-address", FAIL, f"{address!r} is not host:port", "Set AIMASS_RAY_ADDRESS=host:port (or ray://host:10001).")
    why = _tcp(parts.hostname or "127.0.0.1", port)
    if why:
        return Check("ray-address", FAIL, f"{address}: cannot reach {parts.hostname}:{port} ({why})",
                     "Start the cluster, fix AIMASS_RAY_ADDRESS, or unset it to use a local cluster.")
    return Check("ray-address", OK, f"{address} answers")


def check_shm(path: str = "/dev/shm", recommended_bytes: int = 2 * GiB) -> Check:
    """Shared memory for Ray's object store: with too little, Ray falls back to disk (slower)."""
    try:
        du = shutil.disk_usage(path)
    except OSError:
        return Check("shm", WARN, f"{path} is missing: Ray's object store uses /tmp (slower)",
                     "Mount a tmpfs at /dev/shm (in Docker: --shm-size=2g).")
    if du.free < recommended_bytes:
        return Check("shm", WARN, f"{path}: {du.free / GiB:.2f} GiB free (of {du.total / GiB:.2f}); Ray wants "
                                  f"{recommended_bytes / GiB:.0f} GiB or more, else it spills to disk",
                     "Give the machine or container more shared memory (Docker: --shm-size=2g; Kubernetes: an emptyDir "
                     "with medium: Memory at /dev/shm).")
    return Check("shm", OK, f"{path}: {du.free / GiB:.1f} GiB free")


def check_disk(settings: Any, min_free_bytes: int = 2 * GiB, recommended_bytes: int = 10 * GiB) -> Check:
    """Free disk where runs write: AIMASS_HOME, local artifacts, and Ray's temp dir (object spilling, logs)."""
    from aimass.orchestrator.ray_runtime import ray_temp_dir

    places = {"AIMASS_HOME": Path(settings.home), "Ray temp": Path(ray_temp_dir(Path(settings.home)))}
    if "://" not in settings.artifact_root:
        places["artifacts"] = Path(settings.artifact_root)
    seen: dict[int, tuple[str, Path, int]] = {}
    for what, p in places.items():
        base = _existing_parent(p)
        try:
            dev, free = os.stat(base).st_dev, shutil.disk_usage(base).free
        except OSError:
            continue
        if dev not in seen:
            seen[dev] = (what, base, free)
    low = [(w, b, f) for w, b, f in seen.values() if f < min_free_bytes]
    text = ", ".join(f"{w} {b}: {f / GiB:.1f} GiB free" for w, b, f in seen.values())
    if low:
        return Check("disk", FAIL, f"too little disk: {text} (needs {min_free_bytes / GiB:.0f} GiB)",
                     "Free some space, or set AIMASS_HOME / AIMASS_ARTIFACT_ROOT to a larger disk.")
    if any(f < recommended_bytes for _, _, f in seen.values()):
        return Check("disk", WARN, f"little disk: {text}", f"Keep {recommended_bytes / GiB:.0f} GiB free for artifacts and spilling.")
    return Check("disk", OK, text)


def check_tokens(settings: Any) -> Check:
    """Token files are readable by their owner only (Ray's cluster token, the serving and API tokens)."""
    home = Path(settings.home)
    files = {home / "ray-auth-token", Path(settings.serve_token_file or home / "serve-token").expanduser()}
    for env in ("AIMASS_SERVE_TOKEN_FILE", "AIMASS_API_TOKEN_FILE", "RAY_AUTH_TOKEN_PATH"):
        if os.environ.get(env):
            files.add(Path(os.environ[env]).expanduser())
    bad, seen = [], []
    for f in sorted(files):
        try:
            st = f.stat()
        except OSError:
            continue
        seen.append(str(f))
        if st.st_mode & 0o077:
            bad.append((f, st.st_mode & 0o777))
        elif st.st_uid != os.getuid():
            bad.append((f, None))
    if bad:
        what = ", ".join(f"{f} (mode {oct(m)[2:]})" if m is not None else f"{f} (owned by another user)" for f, m in bad)
        return Check("tokens", FAIL, f"token files others can read: {what}",
                     "Run: chmod 600 " + " ".join(str(f) for f, _ in bad) + " (and make sure you own them).")
    return Check("tokens", OK, f"owner-only: {', '.join(seen)}" if seen else "no token files yet (created owner-only when needed)")


# -- running them ---------------------------------------------------------------------------------------------
#: (name, function, needs settings) in the order they are shown.
CHECKS: tuple[tuple[str, Callable[..., Check], bool], ...] = (
    ("python", check_python, False),
    ("packages", check_packages, False),
    ("torch", check_torch, False),
    ("gpus", check_gpus, False),
    ("ports", check_ports, True),
    ("local-cluster", check_local_cluster, True),
    ("serve", check_serve, True),
    ("tracking", check_tracking, True),
    ("artifacts", check_artifacts, True),
    ("ray-address", check_ray_address, True),
    ("shm", check_shm, False),
    ("disk", check_disk, True),
    ("tokens", check_tokens, True),
)


def run_checks(settings: Any = None, deadline_s: float = DEADLINE_S, only: list[str] | None = None) -> list[Check]:
    """Run every check (or those named in ``only``) concurrently; a check still running at the deadline
    is reported as failed, by name, and left behind in a daemon thread (it never delays the answer).

    Args:
        settings: the :class:`aimass.settings.Settings` to check (loaded from the environment when None).
        deadline_s: the time all checks get together.
        only: names of the checks to run (see :data:`CHECKS`).
    """
    from aimass.exceptions import AimassError

    results: list[Check] = []
    if settings is None:
        try:
            settings = _settings()
        except (AimassError, ValueError) as e:  # a broken config.yaml or an invalid AIMASS_* value
            errors = getattr(e, "errors", None)
            if callable(errors) and errors():  # pydantic: name the field, the message and the value
                err = errors()[0]
                first = f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
            else:
                first = str(e).splitlines()[0][:300]
            results.append(Check("settings", FAIL, f"the settings do not load: {first}",
                                 "Fix $AIMASS_HOME/config.yaml or the AIMASS_* variable it names."))
    selected = [c for c in CHECKS if only is None or c[0] in only]
    out: dict[str, Check] = {}

    def one(name: str, fn: Callable[..., Check], needs: bool) -> None:
        try:
            out[name] = fn(settings) if needs else fn()
        except Exception as e:  # noqa: BLE001 - a check that breaks is itself a finding, never a traceback
            out[name] = Check(name, FAIL, f"the check itself failed: {type(e).__name__}: {str(e)[:200]}",
                              "Report this with `aimass doctor --output json`.")

    threads = []
    for name, fn, needs in selected:
        if needs and settings is None:
            out[name] = Check(name, WARN, "skipped: the settings do not load", "Fix the settings first (see above).")
            continue
        t = threading.Thread(target=one, args=(name, fn, needs), name=f"doctor-{name}", daemon=True)
        t.start()
        threads.append((name, t))
    end = time.monotonic() + deadline_s
    late: dict[str, Check] = {}
    for name, t in threads:
        t.join(max(0.0, end - time.monotonic()))
        if t.is_alive():  # a late answer from it is ignored: `late` wins below
            late[name] = Check(name, FAIL, f"did not finish within {deadline_s:g}s (a server that does not answer?)",
                              "See the configured address of this check; `--output json` shows the others.")
    done = {**out, **late}
    return results + [done[name] for name, _, _ in selected if name in done]
