"""``aimass.Client``: a small Python client of the Open Inference Protocol (KServe V2) over REST.

It works with any V2 server (AI Mass, KServe, Triton, MLServer) and retries once on a connection error
or a 503, so a replica being replaced is invisible to callers.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aimass.exceptions import AimassError, AuthError, InvalidRequestError, NotFoundError, ServingError
from aimass.serving.protocol import DATATYPES, PayloadTooLargeError, datatype_of

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
        retries: extra attempts on a connection error or 503 (default 1).
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, token_file: str | os.PathLike | None = None,
                 timeout_s: float = 30.0, retries: int = 1) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.retries = retries
        tok = _find_token(token, token_file)
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)
        self._meta: dict[tuple[str, str | None], dict[str, Any]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any):
        import httpx

        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                r = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.PoolTimeout) as e:
                last = e
            else:
                if r.status_code != 503 or attempt == self.retries:
                    return r
                last = None
            if attempt < self.retries:
                time.sleep(0.05 * (attempt + 1))
        if last is not None:
            raise ServingError(f"cannot reach the inference server at {self.url}: {last}", retryable=True,
                               fix="Is it serving? Try `aimass serving status`.") from last
        return r  # pragma: no cover - the loop returns the last 503

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
            return self._request("GET", "/v2/health/live").status_code == 200
        except AimassError:
            return False

    def ready(self, model: str | None = None, version: str | None = None) -> bool:
        """Server readiness, or a model's (``GET /v2/models/{model}[/versions/{v}]/ready``)."""
        path = "/v2/health/ready" if model is None else f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
        try:
            r = self._request("GET", path)
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
              outputs: list[str] | None = None, request_id: str | None = None) -> InferResult:
        """Run inference.

        Args:
            model: served model name.
            inputs: one array (for the model's single input) or input name -> array. Arrays are cast
                to the datatype the model declares when that loses nothing (float64 -> FP32 is allowed
                here, on purpose: the server itself refuses unsafe casts).
            version: pin a served version (champion or canary).
            outputs: output names wanted (all by default).
            request_id: echoed back as ``id``.
        """
        meta = self._model_meta(model, version)
        specs = {t["name"]: t for t in meta.get("inputs", [])}
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise InvalidRequestError(f"model {model!r} takes {len(specs)} inputs; pass a dict name -> array",
                                          fix=f"Inputs: {', '.join(specs)}.")
            inputs = {next(iter(specs)): inputs}
        tensors = []
        for name, value in inputs.items():
            arr = np.asarray(value)
            spec = specs.get(name)
            if spec is not None and spec["datatype"] in DATATYPES:
                want = DATATYPES[spec["datatype"]]
                if arr.dtype != want and (np.can_cast(arr.dtype, want, "same_kind") or arr.dtype.kind in "iub"):
                    arr = arr.astype(want)
                rank = len(spec["shape"])
                if arr.ndim == rank - 1:  # one row: add the batch dimension
                    arr = arr[None, ...]
            tensors.append({"name": name, "shape": list(arr.shape), "datatype": datatype_of(arr.dtype),
                            "data": arr.ravel().tolist()})
        body: dict[str, Any] = {"inputs": tensors}
        if request_id is not None:
            body["id"] = request_id
        if outputs:
            body["outputs"] = [{"name": n} for n in outputs]
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        r = self._request("POST", path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        self._raise(r)
        doc = r.json()
        outs = {o["name"]: np.asarray(o["data"], dtype=DATATYPES.get(o["datatype"], np.float64)).reshape(o["shape"])
                for o in doc.get("outputs", [])}
        return InferResult(doc.get("model_name", model), doc.get("model_version"), outs, doc.get("id"), doc.get("parameters") or {})
