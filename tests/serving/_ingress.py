"""A real ingress HTTP app with no Ray: the production ``Ingress`` object and ASGI app, where only the
call to the model deployment is replaced by an in-process model. Served by uvicorn on loopback, so
the tests speak real HTTP (standard V2 clients included) in well under a second."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

N_IN, N_CLASSES = 4, 3
TOKEN = "t0k3n-for-the-ingress-tests-0123456789"


def make_ingress(tmp: Path, *, model: Any = None, signature: dict | None = None, max_queued: int = 64, batch_rows: int = 0,
                 queue_wait_s: float | None = None) -> Any:
    """The ingress of one model ``digits`` (version 1) answering from ``model(x) -> probabilities``."""
    from aimass.serving import ingress as ing
    from aimass.serving.auth import TokenAuth
    from aimass.serving.colocate import LocalCopies
    from aimass.serving.metrics import ServingMetrics
    from aimass.serving.protocol import Signature

    class Bare(ing.Ingress):
        def __del__(self):  # the ASGI wrapper's own finaliser expects a running Serve replica
            pass

    token_file = tmp / "serve-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    obj = object.__new__(Bare)
    obj.app_name, obj.metrics, obj.cfg = "t", ServingMetrics(), None
    obj.auth = TokenAuth("token", str(token_file))
    obj.max_request_bytes, obj.timeout_s, obj.overload_status = 1 << 20, 5.0, 503
    obj._handles, obj._signatures, obj._tripped, obj._monitors, obj._bg, obj._batchers = {}, {}, {}, {}, set(), {}
    obj._copies, obj._pool = LocalCopies(lambda k: None), None
    obj._endpoints, obj._endpoints_at = [], float("-inf")
    obj._direct_urls = list  # no Serve controller here; a test sets the URLs it wants listed
    obj.queue_wait_s = 1.0 if queue_wait_s is None else queue_wait_s
    champion = ing.Target("1", "digits--1", "digits")
    obj.routes = {"digits": ing.Route("digits", champion, versions=["1"], max_rows=64, batch_rows=batch_rows, max_queued=max_queued)}
    sig = Signature.from_dict(signature or {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, N_IN]}],
                                            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, N_CLASSES]}],
                                            "class_names": ["a", "b", "c"]})
    model = model or softmax_model

    async def call(t, method, *args):  # stands for the Ray handle call to the model deployment
        if method == "metadata":
            return {"signature": sig.to_dict(), "cache_events": []}
        out = model(*args)
        if asyncio.iscoroutine(out):
            out = await out
        return out, {}

    obj._call = call
    return obj


def softmax_model(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float32) @ np.arange(N_IN * N_CLASSES, dtype=np.float32).reshape(N_IN, N_CLASSES) / 10
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Server:
    """uvicorn serving an ASGI app on a free loopback port, in a thread."""

    def __init__(self, app: Any, **kw: Any) -> None:
        import uvicorn

        from tests.ports import free_port

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="off", **kw))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def _slow_model(x: np.ndarray) -> np.ndarray:
    await asyncio.sleep(0.1)
    return softmax_model(x)


def serve_slow_model(port: int, home: str, queue_wait_s: float) -> None:
    """Serve an ingress whose model answers 4 rows per 100 ms behind a 1,000-request queue, until killed
    (run in its own process by the load test, so the server does not share the client's interpreter)."""
    import uvicorn

    from aimass.serving.ingress import build_asgi_app

    ing = make_ingress(Path(home), model=_slow_model, max_queued=1000, batch_rows=4, queue_wait_s=queue_wait_s)
    uvicorn.run(build_asgi_app(ing), host="127.0.0.1", port=port, log_level="error", lifespan="off", backlog=4096)


async def raw_post(port: int, path: str, payload: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, float, bytes]:
    """One HTTP/1.1 POST on a fresh loopback connection with asyncio streams (cheap enough to open
    hundreds at once from one client process): (status, seconds, body)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload)}\r\n{head}"
                     f"Connection: close\r\n\r\n".encode() + payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, time.perf_counter() - t0, data
