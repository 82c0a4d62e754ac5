"""``aimass.Client``: a small Python client of the Open Inference Protocol (KServe V2) over REST.

It works with any V2 server (AI Mass, KServe, Triton, MLServer). Inference is idempotent, so it retries
with exponential backoff (honouring ``Retry-After``) within a time budget on a connection error, a 429,
502, 503 or 504, and a 500 that is not a V2 error body (what a proxy answers when the process behind
it died). Each retry goes to the next URL: the one given, then the fallbacks, which are the
ingress replicas' direct URLs that an AI Mass server lists in ``GET /v2`` (``endpoints``), re-read
after a failure. So a model replica, an ingress replica or Serve's proxy being replaced is invisible
to callers.

Example:
    >>> from aimass import Client
    >>> c = Client("http://127.0.0.1:8000")            # token: AIMASS_SERVE_TOKEN(_FILE) or $AIMASS_HOME/serve-token
    >>> c.ready()                                       # doctest: +SKIP
    True
    >>> r = c.infer("digits", x)                        # doctest: +SKIP
    >>> r.outputs["probabilities"].argmax(axis=1)       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aimass.exceptions import AimassError, AuthError, InvalidRequestError, NotFoundError, ServingError
from aimass.serving.protocol import BINARY_HEADER, DATATYPES, PayloadTooLargeError, datatype_of, encode_bytes_elements

__all__ = ["Client", "InferResult"]


@dataclass
class InferResult:
    """An inference answer: output name -> array, plus the model and version that answered."""

    model_name: str
    model_version: str | None
    outputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    @property
    def class_names(self) -> list[str]:
        return list(self.parameters.get("class_names") or [])


def _find_token(token: str | None, token_file: str | os.PathLike | None) -> str | None:
    if token:
        return token.strip()
    path = token_file or os.environ.get("AIMASS_SERVE_TOKEN_FILE")
    if not path and os.environ.get("AIMASS_SERVE_TOKEN"):
        return os.environ["AIMASS_SERVE_TOKEN"].strip()
    if not path:
        try:
            from aimass.serving.deploy import default_token_file

            cand = default_token_file()
            path = cand if cand.is_file() else None
        except Exception:  # noqa: BLE001 - no settings: no default token
            path = None
    if path:
        lines = [ln.strip() for ln in Path(path).expanduser().read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return lines[0] if lines else None
    return None


class Client:
    """Open Inference Protocol client.

    Args:
        url: base URL of the server (the application's route prefix included), e.g. ``http://127.0.0.1:8000``.
        token: bearer token. Default: ``token_file``, ``AIMASS_SERVE_TOKEN_FILE``, ``AIMASS_SERVE_TOKEN``, then
            ``$AIMASS_HOME/serve-token`` if it exists.
        token_file: file holding the token (first non-comment line).
        timeout_s: per-request timeout.
        retries: most extra attempts of one call (default 8), each after a backoff (0.05 s doubling to
            2 s, with jitter, or the server's ``Retry-After``), while ``retry_budget_s`` lasts.
        retry_budget_s: longest one call keeps retrying (default 30 s: a replaced ingress replica or proxy
            is back well within it).
        fallback_urls: further base URLs of the same application (e.g. the ``direct_urls`` of
            ``aimass serving status``), tried in turn after a failure.
        discover: also ask the server for its ingress replicas' direct URLs (``GET /v2``) and use them
            as fallbacks; asked again after every URL failed once, and every ``discover_every_s``.
        discover_every_s: how often a long-lived client refreshes the direct URLs (replicas move).
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, token_file: str | os.PathLike | None = None,
                 timeout_s: float = 30.0, retries: int = 8, retry_budget_s: float = 30.0,
                 fallback_urls: list[str] | None = None, discover: bool = True, discover_every_s: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.retries = retries
        self.retry_budget_s = retry_budget_s
        self.fallback_urls = [u.rstrip("/") for u in fallback_urls or () if u.rstrip("/") != self.url]
        self.discover = discover
        self.discover_every_s = discover_every_s
        self._discovered: list[str] = []
        self._discovered_at = float("-inf")
        self._next = 0  # index of the URL the next attempt uses (0: url)
        tok = _find_token(token, token_file)
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        self._http = httpx.Client(headers=headers, timeout=timeout_s)
        self._meta: dict[tuple[str, str | None], dict[str, Any]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def urls(self) -> list[str]:
        """Every base URL this client uses, in the order it tries them: the given URL, then fallbacks."""
        seen = [self.url]
        for u in (*self.fallback_urls, *self._discovered):
            if u not in seen:
                seen.append(u)
        return seen

    def _discover(self) -> None:
        """Learn the ingress replicas' direct URLs (AI Mass's ``endpoints`` in ``GET /v2``), at most every 5 s."""
        import httpx

        if not self.discover or time.monotonic() - self._discovered_at < min(5.0, self.discover_every_s):
            return
        self._discovered_at = time.monotonic()
        for base in self.urls:
            try:
                r = self._http.get(base + "/v2", timeout=min(5.0, self._http.timeout.read or 5.0))
                doc = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("endpoints"), list):  # each with the route prefix
                self._discovered = [u.rstrip("/") for u in doc["endpoints"] if isinstance(u, str) and u.startswith(("http://", "https://"))]
                return

    @staticmethod
    def _retryable(r) -> bool:
        if r.status_code in (429, 502, 503, 504):
            return True
        if r.status_code == 500:  # a V2 error body is the server's verdict; anything else is a proxy whose backend died
            try:
                return not (isinstance(doc := r.json(), dict) and "error" in doc)
            except ValueError:
                return True
        return False

    def _request(self, method: str, path: str, *, retry: bool = True, **kw: Any):
        import httpx

        if retry and time.monotonic() - self._discovered_at > self.discover_every_s:
            self._discover()
        deadline = time.monotonic() + self.retry_budget_s
        last: Exception | None = None
        r = None
        for attempt in range(self.retries + 1 if retry else 1):
            urls = self.urls
            base = urls[self._next % len(urls)]
            try:
                r = self._http.request(method, base + path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.PoolTimeout,
                    httpx.ConnectTimeout) as e:
                last, r = e, None
            else:
                if not self._retryable(r):
                    return r
                last = None
            if not retry or attempt == self.retries or time.monotonic() >= deadline:
                break
            self._next += 1  # the next attempt goes to the next URL
            if self._next % len(urls) == 0:
                self._discover()  # every URL failed once: replicas may have moved
            pause = min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random())
            if r is not None and r.headers.get("retry-after", "").isdigit():
                pause = max(pause, min(5.0, float(r.headers["retry-after"])))
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        if r is not None:
            return r
        raise ServingError(f"cannot reach the inference server at {' or '.join(self.urls)}: {last}", retryable=True,
                           fix="Is it serving? Try `aimass serving status`.") from last

    @staticmethod
    def _raise(r) -> None:
        if r.status_code < 400:
            return
        try:
            body = r.json()
        except ValueError:
            body = {"error": r.text[:500]}
        msg = body.get("error") or f"HTTP {r.status_code}"
        kw = {"fix": body.get("fix"), "location": body.get("location")}
        if r.status_code == 401:
            raise AuthError(msg, **kw)
        if r.status_code == 404:
            raise NotFoundError(msg, **kw)
        if r.status_code == 413:
            raise PayloadTooLargeError(msg, **kw)
        if r.status_code < 500 and r.status_code != 429:
            raise InvalidRequestError(msg, **kw)
        err = ServingError(msg, retryable=r.status_code in (429, 503, 504), **kw)
        err.http_status = r.status_code
        raise err

    def _get(self, path: str) -> dict[str, Any]:
        r = self._request("GET", path)
        self._raise(r)
        return r.json()

    # -- protocol ----------------------------------------------------------------------------------
    def live(self) -> bool:
        """``GET /v2/health/live``."""
        try:
            return self._request("GET", "/v2/health/live", retry=False).status_code == 200
        except AimassError:
            return False

    def ready(self, model: str | None = None, version: str | None = None) -> bool:
        """Server readiness, or a model's (``GET /v2/models/{model}[/versions/{v}]/ready``)."""
        path = "/v2/health/ready" if model is None else f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
        try:
            r = self._request("GET", path, retry=False)
        except AimassError:
            return False
        if r.status_code == 401:
            self._raise(r)
        return r.status_code == 200

    def metadata(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Server metadata, or a model's inputs/outputs (``GET /v2/models/{model}[/versions/{v}]``)."""
        if model is None:
            return self._get("/v2")
        return self._get(f"/v2/models/{model}" + (f"/versions/{version}" if version else ""))

    def _model_meta(self, model: str, version: str | None) -> dict[str, Any]:
        key = (model, version)
        if key not in self._meta:
            self._meta[key] = self.metadata(model, version)
        return self._meta[key]

    def infer(self, model: str, inputs: np.ndarray | dict[str, Any], version: str | None = None,
              outputs: list[str] | None = None, request_id: str | None = None, binary: bool | None = None) -> InferResult:
        """Run inference.

        Args:
            model: served model name.
            inputs: one array (for the model's single input) or input name -> array. Arrays are cast
                to the datatype the model declares when that loses nothing (float64 -> FP32 is allowed
                here, on purpose: the server itself refuses unsafe casts). ``BYTES`` inputs take
                ``bytes`` or ``str`` elements (raw images, text).
            version: pin a served version (champion or canary).
            outputs: output names wanted (all by default).
            request_id: echoed back as ``id``.
            binary: send tensors with the binary tensor data extension (faster for large batches).
                Default: when an input holds ``bytes`` or more than 65,536 values.
        """
        meta = self._model_meta(model, version)
        specs = {t["name"]: t for t in meta.get("inputs", [])}
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise InvalidRequestError(f"model {model!r} takes {len(specs)} inputs; pass a dict name -> array",
                                          fix=f"Inputs: {', '.join(specs)}.")
            inputs = {next(iter(specs)): inputs}
        arrays = {}
        for name, value in inputs.items():
            spec = specs.get(name)
            if spec is not None and spec["datatype"] == "BYTES":
                arr = np.empty(len(value), dtype=object) if isinstance(value, list | tuple) else None
                if arr is not None:
                    arr[:] = list(value)
                else:
                    arr = np.asarray(value, dtype=object)
            else:
                arr = np.asarray(value)
            if spec is not None and spec["datatype"] in DATATYPES:
                want = DATATYPES[spec["datatype"]]
                if arr.dtype != want and (np.can_cast(arr.dtype, want, "same_kind") or arr.dtype.kind in "iub"):
                    arr = arr.astype(want)
                rank = len(spec["shape"])
                if arr.ndim == rank - 1:  # one row: add the batch dimension
                    arr = arr[None, ...]
            arrays[name] = arr
        if binary is None:
            binary = any((a.dtype == object and any(isinstance(v, bytes) for v in a.ravel())) or a.size > 65536
                         for a in arrays.values())
        tensors, blobs = [], []
        for name, arr in arrays.items():
            t: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": datatype_of(arr.dtype)}
            if binary:
                blob = encode_bytes_elements(arr) if arr.dtype == object else np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
                t["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                t["data"] = [v.decode() if isinstance(v, bytes) else v for v in arr.ravel().tolist()] if arr.dtype == object \
                    else arr.ravel().tolist()
            tensors.append(t)
        body: dict[str, Any] = {"inputs": tensors}
        if request_id is not None:
            body["id"] = request_id
        if outputs:
            body["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
        elif binary:
            body["parameters"] = {"binary_data_output": True}
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        head = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if binary:
            headers = {"Content-Type": "application/octet-stream", BINARY_HEADER: str(len(head))}
        r = self._request("POST", path, content=b"".join([head, *blobs]), headers=headers)
        self._raise(r)
        n = r.headers.get(BINARY_HEADER)
        raw = r.content
        doc = json.loads(raw[:int(n)] if n is not None else raw)
        tail, pos, outs = raw[int(n):] if n is not None else b"", 0, {}
        for o in doc.get("outputs", []):
            size = (o.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                chunk, pos = tail[pos:pos + size], pos + size
                if o["datatype"] == "BYTES":
                    outs[o["name"]] = _split_bytes(chunk).reshape(o["shape"])
                else:
                    outs[o["name"]] = np.frombuffer(chunk, dtype=DATATYPES[o["datatype"]].newbyteorder("<")).reshape(o["shape"])
            else:
                dt = DATATYPES.get(o["datatype"], np.float64)
                outs[o["name"]] = np.asarray(o["data"], dtype=dt).reshape(o["shape"])
        return InferResult(doc.get("model_name", model), doc.get("model_version"), outs, doc.get("id"), doc.get("parameters") or {})


def _split_bytes(blob: bytes) -> np.ndarray:
    out, pos = [], 0
    while pos < len(blob):
        (m,) = struct.unpack_from("<I", blob, pos)
        out.append(blob[pos + 4:pos + 4 + m])
        pos += 4 + m
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr
