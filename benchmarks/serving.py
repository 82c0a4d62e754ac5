"""Serving benchmark: raw model call vs plain FastAPI+uvicorn vs aimass serve (without / with batching).

All four are measured in one run, per model, on the same model and the same V2 JSON request (one
row), with the same load generator (a small asyncio HTTP/1.1 client with keep-alive, so the client
costs little CPU), at concurrency 1, 8 and 32. At concurrency 1 each server is measured in slices
interleaved with slices of the raw call, and its overhead is its p50 minus the raw call's p50 from those
same minutes: on a shared VM the same model call drifts by 30 % within minutes. Three zoo MLPs (64 features -> 10 classes) are measured:

* ``small`` (hidden 256-128, ~0.2 ms per call): the serving overhead dominates;
* ``large`` (hidden 2048-2048-2048, 8.5 M parameters, ~3 ms per call here);
* ``xlarge`` (hidden 4096 x 4, 50 M parameters, memory-bound: one row costs about as much as 32):
  the model dominates, the regime batching is for.

aimass is measured twice, in its default layout (ingress replica -> model replica, one gRPC hop) and
with ``colocate: true`` (the ingress answers from its own copy of the champion; CPU only), each
without and with batching (continuous: no fill window unless ``--wait-ms`` is set), through the
ingress replica's direct port; the default layout is also measured through Serve's proxy unless
``--no-proxy``. The goals are reported for both layouts.

A do-nothing Ray Serve application (proxy + one empty replica) is measured too: the floor any Serve
app pays on this machine. The script starts its own local Ray cluster (loopback, its own temp dir,
GCS port 6392, never 6379) and removes it at the end.

Goals (issue 4): p50 overhead over the raw call <= 2 ms at concurrency 1; batching >= 3x the
unbatched throughput at <= 1.2x its p95; >= 1.0x the FastAPI server's throughput at concurrency 32.

Usage:
    python benchmarks/serving.py            # 8 s per cell
    python benchmarks/serving.py --quick    # 3 s per cell
    python benchmarks/serving.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi import Request  # module level: the baseline's route annotation resolves here

N_IN, N_CLASSES = 64, 10
MODELS = {"small": [256, 128], "large": [2048, 2048, 2048], "xlarge": [4096, 4096, 4096, 4096]}
CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "gpu": gpu, "python": platform.python_version()}


def request_body(rows: int = 1) -> bytes:
    x = np.random.default_rng(0).normal(size=(rows, N_IN)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "input", "shape": [rows, N_IN], "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()


# -- load generator -----------------------------------------------------------------------------------
async def _worker(host: str, port: int, req: bytes, deadline: float, lat: list, errors: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            writer.write(req)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            await reader.readexactly(length)
            if not status.startswith(b"HTTP/1.1 200"):
                errors.append(status.strip().decode())
                continue
            lat.append(time.perf_counter() - t)
    finally:
        writer.close()


def _request(url: str, path: str, token: str | None) -> tuple[str, int, bytes]:
    host, port = url.split("//")[1].split(":")
    body = request_body()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    return host, int(port), ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _load(host: str, port: int, req: bytes, concurrency: int, secs: float) -> tuple[list, list, float]:
    async def go() -> tuple[list, list, float]:
        lat: list = []
        errors: list = []
        start = time.perf_counter()
        await asyncio.gather(*(_worker(host, port, req, start + secs, lat, errors) for _ in range(concurrency)))
        return lat, errors, time.perf_counter() - start

    return asyncio.run(go())


def run_load(url: str, path: str, token: str | None, concurrency: int, seconds: float, warmup_s: float = 1.0) -> dict:
    host, port, req = _request(url, path, token)
    _load(host, port, req, concurrency, warmup_s)
    lat, errors, elapsed = _load(host, port, req, concurrency, seconds)
    return summarize(lat, elapsed, errors)


def run_paired_c1(url: str, path: str, token: str | None, raw: "RawModel", seconds: float, rounds: int = 6) -> dict:
    """Concurrency 1, interleaved with the raw model call: ``rounds`` alternating slices of the raw call
    (in this process) and of the server, so both see the same machine. On a shared VM the same call
    drifts by 30 % within minutes, which would swamp a 2 ms overhead measured against a raw call taken
    at another time. The summary gets ``raw_p50_ms`` (the interleaved raw call) and ``overhead_ms``."""
    host, port, req = _request(url, path, token)
    _load(host, port, req, 1, 1.0)
    lat: list = []
    raw_lat: list = []
    errors: list = []
    elapsed = 0.0
    for _ in range(rounds):
        raw_lat += raw.latencies(seconds / rounds / 2)
        lt, er, el = _load(host, port, req, 1, seconds / rounds)
        lat, errors, elapsed = lat + lt, errors + er, elapsed + el
    out = summarize(lat, elapsed, errors)
    out["raw_p50_ms"] = float(np.percentile(np.asarray(raw_lat) * 1000.0, 50))
    out["overhead_ms"] = out["p50_ms"] - out["raw_p50_ms"]
    return out


def run_cells(url: str, path: str, token: str | None, raw: "RawModel", seconds: float) -> dict:
    """Concurrency 1 (paired with the raw call), 8 and 32."""
    out = {1: run_paired_c1(url, path, token, raw, seconds)}
    for c in CONCURRENCY[1:]:
        out[c] = run_load(url, path, token, c, seconds)
    return out


def summarize(lat: list, elapsed: float, errors: list | None = None) -> dict:
    if not lat:
        raise RuntimeError(f"no request succeeded: {(errors or ['?'])[:3]}")
    a = np.asarray(lat) * 1000.0
    return {"n": len(lat), "p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "rps": len(lat) / elapsed, "errors": len(errors or [])}


# -- the model, the raw call, the FastAPI baseline ------------------------------------------------------
def build_model_dir(root: Path, hidden: list[int]) -> Path:
    import torch

    from aimass.models.io import save_model
    from aimass.models.registry import ModelCard, build_model

    torch.manual_seed(0)
    card = ModelCard(name="mlp", input_shape=[N_IN], num_classes=N_CLASSES, args={"hidden": hidden, "dropout": 0.0},
                     class_names=[str(i) for i in range(N_CLASSES)])
    return save_model(build_model(card), root / f"model-{'-'.join(map(str, hidden))}")


class RawModel:
    """The model's own call on one row, in this process: what an ideal server would add nothing to."""

    def __init__(self, model_dir: Path) -> None:
        import torch

        from aimass.models.io import load_model

        torch.set_num_threads(1)
        self.model = load_model(model_dir)
        self.x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, N_IN)).astype(np.float32))
        for _ in range(200):
            self.model.predict_proba(self.x)

    def latencies(self, seconds: float) -> list[float]:
        lat = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            self.model.predict_proba(self.x).numpy()
            lat.append(time.perf_counter() - t)
        return lat

    def summary(self, seconds: float) -> dict:
        start = time.perf_counter()
        lat = self.latencies(seconds)
        return summarize(lat, time.perf_counter() - start)


def _fastapi_server(model_dir: str, port: int) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    from aimass.models.io import load_model

    torch.set_num_threads(1)
    model = load_model(model_dir)
    app = FastAPI()

    @app.post("/v2/models/bench/infer")
    async def infer(request: Request):
        doc = json.loads(await request.body())
        t = doc["inputs"][0]
        x = torch.from_numpy(np.asarray(t["data"], dtype=np.float32).reshape(t["shape"]))
        p = model.predict_proba(x).numpy()
        out = {"model_name": "bench", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": list(p.shape),
                                                   "data": p.ravel().tolist()}]}
        return Response(json.dumps(out), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


# -- aimass serve ---------------------------------------------------------------------------------------
class Cluster:
    def __init__(self, home: Path) -> None:
        from aimass.orchestrator import ray_runtime as rr

        self.home, self.rr = home, rr
        self.port = free_port()
        os.environ.update({"AIMASS_HOME": str(home), "AIMASS_SERVE_PORT": str(self.port),
                           "AIMASS_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "RAY_AUTH_MODE": "token",
                           "RAY_USAGE_STATS_ENABLED": "0"})
        for k in ("AIMASS_SERVE_TOKEN", "AIMASS_SERVE_TOKEN_FILE", "RAY_ADDRESS", "AIMASS_RAY_ADDRESS"):
            os.environ.pop(k, None)
        rr.use_cluster_token(home)
        self.temp_dir = rr.ray_temp_dir(home)

    def __enter__(self) -> "Cluster":
        self.gcs_port = int(os.environ.get("AIMASS_BENCH_RAY_PORT", "6392"))
        address = self.rr.start_local_cluster(self.home, port=self.gcs_port, dashboard_port=free_port())
        self.rr.connect(address, logging_level="ERROR", log_to_driver=False)
        return self

    def __exit__(self, *exc) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001
            pass
        ray.shutdown()
        self.rr.stop_local_cluster(self.home)  # this home's cluster only
        _kill_marked([self.temp_dir, str(self.home), f":{self.gcs_port} "])  # the Ray client server names only the port
        if self.temp_dir.startswith("/tmp/aimass-ray-"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _settle(app: str, timeout_s: float = 30.0, quiet_s: float = 2.0) -> None:
    """Until the application's replica processes have exited, then a short pause: a teardown that
    overlaps the next variant's cells would be measured as that variant's latency."""
    marker = f"ServeReplica:{app}:"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = False
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    alive = marker in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if alive:
                    break
        if not alive:
            break
        time.sleep(0.2)
    time.sleep(quiet_s)


def _kill_marked(markers: list[str]) -> None:
    me = os.getpid()
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd.replace("\0", " ") for m in markers):
            try:
                os.kill(int(p), signal.SIGKILL)
            except OSError:
                pass


def register(home: Path, model_dir: Path, name: str) -> None:
    from aimass.tracking import Tracker

    tr = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    exp = tr.ensure_experiment("bench", artifact_location=str(home / "mlartifacts"))
    run = tr.start_run(exp, "bench")
    uri = tr.log_model(run, model_dir, [N_IN], N_CLASSES)
    tr.end_run(run)
    tr.set_alias(name, "champion", tr.register(uri, name, run_id=run))


def serve_cfg(name: str, prefix: str, model: str, batching: bool, gpu: bool, batch: int, wait_s: float, colocate: bool = False):
    from aimass.serving.config import BatchingSpec, DeploymentSpec, IngressSpec, ModelSpec, ServeConfig

    return ServeConfig(
        name=name, route_prefix=prefix,
        models=[ModelSpec(name="bench", model_uri=f"models:/{model}@champion",
                          deployment=DeploymentSpec(replicas=1, num_cpus=0.5, num_gpus=1.0 if gpu else 0.0, max_ongoing_requests=64,
                                                    max_queued_requests=1024),
                          batching=BatchingSpec(enabled=batching, max_batch_size=batch, batch_wait_timeout_s=wait_s),
                          colocate=colocate)],
        ingress=IngressSpec(replicas=1, num_cpus=0.5, max_ongoing_requests=512))


def _wait_direct(app: str, proxy_port: int, timeout_s: float = 30.0) -> str | None:
    """Base URL of the application's ingress replica's own port (route prefix not included), once Serve
    has published it; None in Serve's classic mode."""
    from aimass.serving.deploy import direct_urls

    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1") == "0":
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        urls = direct_urls(app, {"host": "127.0.0.1", "port": proxy_port})
        if urls:
            return urls[0]
        time.sleep(0.5)
    return None


def _wait_colocated(base: str, prefix: str, token: str, timeout_s: float = 120.0) -> None:
    """Until the ingress answers the model from its own copy (model metadata says ``colocated``)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}{prefix}/v2/models/bench", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        if r.status_code == 200 and (r.json().get("parameters") or {}).get("colocated"):
            return
        time.sleep(0.5)
    raise RuntimeError("the ingress did not load its colocated copy of the model in time")


def serve_floor(port: int, seconds: float) -> dict:
    """Proxy + one replica that returns a constant: what any Ray Serve request costs here (through the
    proxy, and straight to the replica's direct-ingress port when Serve runs in throughput mode)."""
    from ray import serve
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
    class Floor:
        async def __call__(self, request):
            await request.body()
            return Response(b'{"ok": true}', media_type="application/json")

    serve.run(Floor.bind(), name="floor", route_prefix="/floor", logging_config={"enable_access_log": False, "log_level": "WARNING"})
    try:
        out = {"proxy": {c: run_load(f"http://127.0.0.1:{port}", "/floor", None, c, seconds) for c in CONCURRENCY}}
        direct = _wait_direct("floor", port, 10.0)
        if direct:
            out["direct"] = {c: run_load(direct, "/floor", None, c, seconds) for c in CONCURRENCY}
        return out
    finally:
        serve.delete("floor")


# -- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per cell instead of 8 s.")
    ap.add_argument("--seconds", type=float, default=None, help="Measured seconds per cell.")
    ap.add_argument("--batch", type=int, default=32, help="maxBatchSize of the batched server.")
    ap.add_argument("--wait-ms", type=float, default=0.0, help="batchWaitTimeoutS of the batched server, in ms (0: continuous batching, no fill window).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--models", default="small,large,xlarge", help="Comma-separated: small, large, xlarge.")
    ap.add_argument("--no-proxy", action="store_true", help="Skip the reference measurements through Serve's proxy.")
    args = ap.parse_args(argv)
    secs = args.seconds or (3.0 if args.quick else 8.0)
    info = machine()
    gpu = info["gpu"] is not None
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, GPU: {info['gpu'] or 'none'}; {secs:g} s per cell", flush=True)

    home = Path(tempfile.mkdtemp(prefix="amsb-", dir="/tmp"))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    all_results: dict[str, dict[str, dict[int, dict]]] = {}
    floor: dict[str, dict[int, dict]] = {}
    try:
        dirs = {m: build_model_dir(home, MODELS[m]) for m in models}
        raws = {m: RawModel(dirs[m]) for m in models}
        for m in models:
            res: dict[str, dict[int, dict]] = {}
            res["raw model call"] = {1: raws[m].summary(secs)}
            port = free_port()
            proc = mp.get_context("spawn").Process(target=_fastapi_server, args=(str(dirs[m]), port), daemon=True)
            proc.start()
            try:
                _wait_port(port)
                res["FastAPI + uvicorn"] = run_cells(f"http://127.0.0.1:{port}", "/v2/models/bench/infer", None, raws[m], secs)
            finally:
                proc.terminate()
                proc.join(10)
            all_results[m] = res
            print(f"[{m}] raw {res['raw model call'][1]['p50_ms']:.2f} ms, FastAPI done", flush=True)

        with Cluster(home) as cl:
            from aimass.serving.auth import read_tokens
            from aimass.serving.deploy import deploy, shutdown
            from aimass.settings import Settings

            settings = Settings.load()
            url = f"http://127.0.0.1:{cl.port}"
            for m in models:
                register(home, dirs[m], f"bench-{m}")
                variants = [("aimass serve, no batching", f"{m}-nobatch", False, False),
                            ("aimass serve, batching", f"{m}-batch", True, False)]
                if not gpu:  # colocation is for CPU models
                    variants += [("aimass serve, colocated, no batching", f"{m}-co-nobatch", False, True),
                                 ("aimass serve, colocated, batching", f"{m}-co-batch", True, True)]
                for label, name, batching, colocate in variants:
                    st = deploy(serve_cfg(name, f"/{name}", f"bench-{m}", batching, gpu, args.batch, args.wait_ms / 1000.0, colocate),
                                settings)
                    token = read_tokens(st["token_file"])[0]
                    direct = _wait_direct(name, cl.port)
                    path = f"/{name}/v2/models/bench/infer"
                    if colocate:
                        _wait_colocated(direct or url, f"/{name}", token)
                    if direct:  # the ingress replica's own port: what `aimass serve` prints as the direct URL
                        all_results[m][label] = run_cells(direct, path, token, raws[m], secs)
                        if not colocate and not args.no_proxy:
                            all_results[m][label + ", via proxy"] = run_cells(url, path, token, raws[m], secs)
                    else:
                        all_results[m][label] = run_cells(url, path, token, raws[m], secs)
                    print(f"[{m}] {label} done", flush=True)
                    shutdown(name)
                    _settle(name)
            floor = serve_floor(cl.port, secs)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    for m in models:
        report(m, all_results[m], floor, info, secs, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "seconds": secs, "results": all_results, "serve_floor": floor}, indent=2))
    return 0


def report(model: str, results: dict, floor: dict, info: dict, secs: float, args) -> None:
    fa = results["FastAPI + uvicorn"]
    nb, b = results["aimass serve, no batching"], results["aimass serve, batching"]
    lines = ["| server | concurrency | p50 ms | p95 ms | p99 ms | req/s | errors | overhead ms (interleaved raw p50) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, rows in results.items():
        for c, r in sorted(rows.items()):
            extra = f"{r['overhead_ms']:.2f} ({r['raw_p50_ms']:.2f})" if "overhead_ms" in r else "-"
            lines.append(f"| {label} | {c} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.0f} | {r['errors']} | {extra} |")
    for how, rows in floor.items():
        for c, r in sorted(rows.items()):
            lines.append(f"| (reference) empty Ray Serve app, {how} | {c} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['rps']:.0f} | {r['errors']} | - |")
    goals = []
    modes = [("", nb, b)]
    if "aimass serve, colocated, batching" in results:
        modes.append((" [colocated]", results["aimass serve, colocated, no batching"], results["aimass serve, colocated, batching"]))
    for tag, nb_, b_ in modes:
        overhead, overhead_nb = b_[1]["overhead_ms"], nb_[1]["overhead_ms"]
        tput = b_[32]["rps"] / nb_[32]["rps"]
        p95 = b_[32]["p95_ms"] / nb_[32]["p95_ms"]
        vs_fa = b_[32]["rps"] / fa[32]["rps"]
        goals += [
            (f"p50 overhead over the raw call at concurrency 1 (no batching / batching){tag}",
             f"{overhead_nb:.2f} / {overhead:.2f} ms", "<= 2 ms", max(overhead_nb, overhead) <= 2.0),
            (f"batching vs no batching, throughput at concurrency 32{tag}", f"{tput:.2f}x", ">= 3x", tput >= 3.0),
            (f"batching vs no batching, p95 at concurrency 32{tag}", f"{p95:.2f}x", "<= 1.2x", p95 <= 1.2),
            (f"aimass (batching) vs FastAPI, throughput at concurrency 32{tag}", f"{vs_fa:.2f}x", ">= 1.0x", vs_fa >= 1.0),
        ]
    goals.append(("FastAPI p50 overhead over the raw call at concurrency 1 (reference)", f"{fa[1]['overhead_ms']:.2f} ms", "-", None))
    lines += ["", "| goal | measured | target | met |", "|---|---:|---:|:---:|"]
    for g, m, t, ok in goals:
        lines.append(f"| {g} | {m} | {t} | {'-' if ok is None else 'yes' if ok else 'no'} |")
    print()
    print(f"### model: {model} (MLP 64-{'-'.join(map(str, MODELS[model]))}-10)")
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), GPU: {info['gpu'] or 'none'}, Python {info['python']}; "
          f"{secs:g} s per cell; batch {args.batch} rows, wait {args.wait_ms:g} ms")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
