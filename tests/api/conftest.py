"""Fixtures: the control-plane API served by uvicorn on 127.0.0.1 (a free port, a background thread),
backed by the real Kubernetes executor over the in-memory Kubernetes API."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from tests.ports import free_port

IMAGE = "ghcr.io/acme/aimass:0.1.0"
NAMESPACE = "runs"
TOKENS = {
    "alice-token-0123456789abcdef": "alice",
    "bob-token-0123456789abcdef00": "bob",
    "root-token-0123456789abcdef0": "root",
}
TOKEN = {ident: tok for tok, ident in TOKENS.items()}


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path / "home"))
    for var in ("AIMASS_API_TOKEN", "AIMASS_API_TOKEN_FILE", "AIMASS_API_URL", "AIMASS_RAY_IMAGE", "AIMASS_K8S_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)


class ServerThread:
    """uvicorn in a daemon thread; `stop()` asks it to exit and waits."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", timeout_keep_alive=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Api:
    url: str
    fake: Any
    app: Any
    clients: list = field(default_factory=list)

    def client(self, identity: str | None = "alice", token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif identity is not None:
            headers["Authorization"] = f"Bearer {TOKEN[identity]}"
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)
        self.clients.append(c)
        return c


@pytest.fixture
def serve():
    """Start an API for a test: serve(config=None, backend=None, fake=None) -> Api."""
    from aimass.api import ApiConfig, create_app
    from aimass.k8s.testing import FakeKubeApi
    from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

    started: list[tuple[ServerThread, Api]] = []

    def _serve(config: ApiConfig | None = None, backend: Any = None, fake: FakeKubeApi | None = None) -> Api:
        fake = fake or FakeKubeApi([NAMESPACE])
        if backend is None:
            backend = KubernetesExecutor(namespace=NAMESPACE, image=IMAGE, service_account="aimass-runner",
                                         api_client=fake.api_client(), sleep=lambda s: time.sleep(min(s, 0.05)))
        config = config or ApiConfig(tokens=dict(TOKENS), admins=frozenset({"root"}), rate_per_s=1000, burst=1000)
        app = create_app(config, backend=backend)
        st = ServerThread(app).start()
        api = Api(st.url, fake, app)
        started.append((st, api))
        return api

    yield _serve
    for st, api in started:
        for c in api.clients:
            c.close()
        st.stop()


@pytest.fixture
def api(serve):
    return serve()
