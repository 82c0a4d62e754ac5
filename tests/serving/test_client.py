"""``aimass.Client`` against real HTTP servers (the real ingress app, no Ray): retry with backoff on
what a dying proxy or replica answers, fallback to the ingress replicas' direct URLs, discovery of
those URLs, binary tensors and BYTES."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aimass.exceptions import InvalidRequestError, ServingError
from aimass.serving.client import Client
from tests.ports import free_port
from tests.serving._ingress import N_IN, TOKEN, Server, make_ingress, softmax_model


class Flaky:
    """ASGI wrapper: the first ``n`` inference requests get what Serve's proxy answers when the
    process behind it died (plain-text 500), or a bare 503."""

    def __init__(self, app, n: int, status: int = 500) -> None:
        self.app, self.n, self.status, self.seen = app, n, status, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/infer") and self.seen < self.n:
            self.seen += 1
            await send({"type": "http.response.start", "status": self.status, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
            return
        await self.app(scope, receive, send)


@pytest.fixture()
def app(tmp_path):
    from aimass.serving.ingress import build_asgi_app

    ing = make_ingress(tmp_path)
    return ing, build_asgi_app(ing)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_infer_retries_what_a_dying_proxy_answers(app, status):
    _, asgi = app
    flaky = Flaky(asgi, 3, status)
    x = np.ones((2, N_IN), dtype=np.float32)
    with Server(flaky) as s, Client(s.url, token=TOKEN, discover=False) as c:
        res = c.infer("digits", x)
    assert flaky.seen == 3 and np.allclose(res["probabilities"], softmax_model(x), atol=1e-6)


def test_a_v2_error_is_not_retried(app):
    _, asgi = app
    with Server(asgi) as s, Client(s.url, token=TOKEN, discover=False) as c:
        t = time.monotonic()
        with pytest.raises(InvalidRequestError, match="dimension 1 is 5"):
            c.infer("digits", np.ones((1, N_IN + 1), dtype=np.float32))
        assert time.monotonic() - t < 1.0


def test_a_dead_url_falls_back_to_the_next_one(app):
    _, asgi = app
    dead = f"http://127.0.0.1:{free_port()}"
    with Server(asgi) as s, Client(dead, token=TOKEN, fallback_urls=[s.url], discover=False) as c:
        assert c.infer("digits", np.ones((1, N_IN))).model_version == "1"


def test_the_direct_urls_the_server_lists_are_used_when_its_stable_url_dies(tmp_path):
    """The stable URL (a proxy) lists the direct URL of the ingress replica in GET /v2; once the proxy is
    gone, the same client keeps answering from the direct URL."""
    from aimass.serving.ingress import build_asgi_app

    (tmp_path / "direct").mkdir()
    with Server(build_asgi_app(make_ingress(tmp_path / "direct"))) as direct:
        proxy_ing = make_ingress(tmp_path)
        proxy_ing._direct_urls = lambda: [direct.url]
        with Server(build_asgi_app(proxy_ing)) as proxy:
            c = Client(proxy.url, token=TOKEN, retry_budget_s=10)
            assert c.infer("digits", np.ones((1, N_IN))).model_version == "1"
            assert c.urls == [proxy.url, direct.url]
        with Client(proxy.url, token=TOKEN, retry_budget_s=2) as c2:  # a new client, after the proxy died
            with pytest.raises(ServingError, match="cannot reach"):
                c2.infer("digits", np.ones((1, N_IN)))
        x = np.ones((3, N_IN))
        assert c.infer("digits", x)["probabilities"].shape == (3, 3)  # the first client still knows the direct URL
        c.close()


def test_retries_stop_within_the_budget(app):
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(dead, token=TOKEN, retry_budget_s=1.0, discover=False) as c:
        t = time.monotonic()
        with pytest.raises(ServingError, match="cannot reach"):
            c.metadata("digits")
        assert time.monotonic() - t < 3.0


def test_binary_tensors_and_bytes_through_the_client(tmp_path):
    from aimass.serving.ingress import build_asgi_app

    sig = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
           "outputs": [{"name": "length", "datatype": "FP32", "shape": [-1, 1]}]}
    ing = make_ingress(tmp_path, model=lambda x: np.array([[len(v)] for v in x], dtype=np.float32), signature=sig)
    with Server(build_asgi_app(ing)) as s, Client(s.url, token=TOKEN, discover=False) as c:
        assert c.infer("digits", [b"\x89PNG\x00", b"ab"])["length"].ravel().tolist() == [5.0, 2.0]  # binary (bytes)
        assert c.infer("digits", ["héllo"])["length"].ravel().tolist() == [6.0]  # JSON strings
    x = np.random.default_rng(0).normal(size=(4, N_IN)).astype(np.float32)
    from aimass.serving.ingress import build_asgi_app as b2

    with Server(b2(make_ingress(tmp_path))) as s, Client(s.url, token=TOKEN, discover=False) as c:
        assert np.allclose(c.infer("digits", x, binary=True)["probabilities"], softmax_model(x), atol=1e-6)
