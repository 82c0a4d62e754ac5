"""Authentication, rate limits and the body-size limit of the control-plane API."""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["RateLimiter", "authenticate_header", "BodyLimitMiddleware", "BodyTooLarge"]


class RateLimiter:
    """Token buckets keyed by identity: ``rate_per_s`` refill, ``burst`` capacity.

    ``take(key)`` returns 0 when the request may go ahead, else the seconds to wait.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def take(self, key: str, cost: float = 1.0) -> float:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self._max_keys:  # forget the fullest (idle) buckets first
                for k, _ in sorted(self._buckets.items(), key=lambda kv: -kv[1][0])[: len(self._buckets) // 2]:
                    self._buckets.pop(k, None)
            return (cost - tokens) / self.rate


def authenticate_header(header: str | None, tokens: dict[str, str]) -> str | None:
    """The identity of a valid ``Authorization: Bearer <token>`` header, else None.

    Every configured token is compared in constant time (no early exit), so timing reveals neither
    which token nor how much of it matched.
    """
    if not header:
        return None
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    presented_b = presented.strip().encode()
    found: str | None = None
    for token, identity in tokens.items():
        if hmac.compare_digest(presented_b, token.encode()):
            found = identity
    return found


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises HTTP exceptions)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")


def _json_response(status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> tuple[dict, dict]:
    data = json.dumps(body).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())] + (headers or [])}
    return start, {"type": "http.response.body", "body": data}


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: at once from ``Content-Length``, or while streaming.

    A pure ASGI middleware, so an oversized body is refused before anything reads or parses it.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, status: int, message: str, fix: str) -> tuple[dict, dict]:
        code = "payload_too_large" if status == 413 else "invalid_request"
        return _json_response(status, {"error": code, "message": message, "got": None, "fix": fix, "location": None,
                                       "retryable": False})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        if cl is not None:
            if not cl.strip().isdigit():
                start, body = self._error(400, "invalid Content-Length header", "Send a valid Content-Length.")
                await send(start)
                await send(body)
                return
            if int(cl) > self.max_bytes:
                start, body = self._error(413, f"request body larger than {self.max_bytes} bytes",
                                          "Send a smaller pipeline spec (keep data out of it).")
                await send(start)
                await send(body)
                return
        received = 0
        limit = self.max_bytes

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))


YAML_TYPES = (b"application/yaml", b"application/x-yaml", b"text/yaml")


class YamlBodyMiddleware:
    """``POST <path>`` with a YAML content type: the body is the pipeline document itself.

    It becomes the JSON submission ``{"specYaml": <the text>}`` before routing, so a raw YAML body goes
    through exactly the validation, limits and errors of a JSON one (``curl --data-binary @p.yaml``).
    Runs inside :class:`BodyLimitMiddleware`, which has already bounded the body.
    """

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        ctype = dict(scope.get("headers") or []).get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path or ctype not in YAML_TYPES:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            text = b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            start, body = _json_response(400, {"error": "invalid_request", "message": "the YAML body is not UTF-8 text",
                                               "got": None, "fix": "Send the pipeline file as UTF-8.", "location": None,
                                               "retryable": False})
            await send(start)
            await send(body)
            return
        payload = json.dumps({"specYaml": text}).encode()
        headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)
