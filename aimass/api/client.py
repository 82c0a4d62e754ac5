"""A client of the control-plane API that is also an Executor (``aimass submit --to api``).

Example:
    >>> ex = ControlPlaneExecutor("https://aimass.example.com", token_file="~/.aimass/api-token")
    >>> ref = ex.submit(load_pipeline("pipelines/quickstart.yaml"), run_id=new_run_id())   # doctest: +SKIP
    >>> ex.status(ref).state                                                               # doctest: +SKIP
    'PENDING'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from aimass.exceptions import (
    AimassError,
    AuthError,
    ConflictError,
    ExecutorError,
    InvalidRequestError,
    NotFoundError,
    SpecError,
    SpecErrors,
)
from aimass.orchestrator.executors.base import RunStatus, SubmissionRef

if TYPE_CHECKING:  # pragma: no cover
    from aimass.spec import PipelineSpec

__all__ = ["ControlPlaneExecutor", "resolve_api_token"]

_RUNS = "/v1/pipelines/runs"


def resolve_api_token(token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """From ``token``, ``token_file``, ``AIMASS_API_TOKEN`` or ``AIMASS_API_TOKEN_FILE`` (first wins)."""
    if token:
        return token.strip()
    path = token_file or None
    if path is None and os.environ.get("AIMASS_API_TOKEN"):
        return os.environ["AIMASS_API_TOKEN"].strip()
    path = path or os.environ.get("AIMASS_API_TOKEN_FILE")
    if not path:
        return None
    p = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    except OSError as exc:
        raise AuthError("cannot read the API token file", got=str(p), fix="Check --token-file.") from exc
    if not lines:
        raise AuthError("the API token file is empty", got=str(p))
    first = lines[0]
    return first.split(":", 1)[1].strip() if ":" in first else first


class ControlPlaneExecutor:
    """Submit and follow runs through the AI Mass control-plane API.

    Args:
        url: the API's base URL.
        token / token_file: the bearer token (see :func:`resolve_api_token`).
        timeout_s: per-request timeout (log streams have none).
        transport: an ``httpx`` transport (tests).
    """

    backend: ClassVar[str] = "api"

    def __init__(self, url: str | None = None, *, token: str | None = None, token_file: str | None = None,
                 timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None, verify: bool | str = True) -> None:
        self.url = (url or os.environ.get("AIMASS_API_URL") or "").rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise InvalidRequestError("the control-plane API URL must be http(s)", got=self.url or None,
                                      fix="Pass --api-url https://<host> or set AIMASS_API_URL.")
        self.token_file = str(token_file) if token_file else None
        tok = resolve_api_token(token, token_file)
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport, verify=verify)

    @classmethod
    def from_ref(cls, ref: SubmissionRef) -> "ControlPlaneExecutor":
        return cls(ref.address, token_file=ref.options.get("token_file"))

    def close(self) -> None:
        self._http.close()

    # --- plumbing -------------------------------------------------------------------------------
    def _raise(self, r: httpx.Response, source: str | None = None) -> None:
        try:
            body = r.json()
        except ValueError:
            body = {"message": r.text[:300]}
        msg = body.get("message") or f"HTTP {r.status_code}"
        kw: dict[str, Any] = {"got": body.get("got"), "fix": body.get("fix"), "location": body.get("location")}
        if r.status_code == 422 and body.get("error") == "invalid_spec":
            errs = []
            for e in body.get("errors") or [body]:
                loc = e.get("location")
                if source and loc and loc.split(":", 1)[0] in ("spec", "specYaml"):
                    loc = source + loc[len(loc.split(":", 1)[0]):]
                errs.append(SpecError(e.get("message", ""), got=e.get("got"), fix=e.get("fix"), location=loc))
            raise SpecErrors(errs, source)
        if r.status_code == 401:
            raise AuthError(msg, fix=body.get("fix") or "Check --token-file / AIMASS_API_TOKEN_FILE.")
        if r.status_code == 404:
            raise NotFoundError(msg, fix=body.get("fix"))
        if r.status_code == 409:
            raise ConflictError(msg, **kw)
        if r.status_code == 429:
            raise ExecutorError(msg, got=body.get("got"), retryable=True,
                                fix=f"Retry after {r.headers.get('Retry-After', 'a few')} s.")
        if r.status_code < 500:
            err = InvalidRequestError(msg, **kw)
            if body.get("errors"):
                err = InvalidRequestError(msg + ": " + "; ".join(e.get("message", "") for e in body["errors"]), **kw)
            raise err
        # The server says whether trying again can help: a misconfigured server (no image) cannot.
        retryable = body.get("retryable")
        raise ExecutorError(f"the control plane failed: {msg}", got=r.status_code, fix=body.get("fix"),
                            retryable=retryable if isinstance(retryable, bool) else True)

    def _request(self, method: str, path: str, *, source: str | None = None, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ExecutorError(f"cannot reach the control-plane API at {self.url}", got=str(exc)[:300], retryable=True,
                                fix="Check --api-url and your network.") from None
        if r.status_code >= 400:
            self._raise(r, source)
        return r.json()

    def _ref(self, d: dict[str, Any]) -> SubmissionRef:
        status = RunStatus(state=d.get("state", "UNKNOWN"), message=d.get("message"), started_at=d.get("startedAt"),
                           finished_at=d.get("finishedAt"), details=d.get("details") or {})
        opts = {"token_file": self.token_file} if self.token_file else {}
        return SubmissionRef(run_id=d["runId"], backend=self.backend, pipeline=d.get("pipeline", ""),
                             submitted_at=d.get("submittedAt") or 0.0, namespace=d.get("namespace"), name=d["runId"],
                             address=self.url, owner=d.get("owner"), labels=d.get("labels") or {}, options=opts, status=status)

    # --- the protocol ---------------------------------------------------------------------------
    def submit(self, spec: "PipelineSpec", run_id: str, *, labels: dict[str, str] | None = None,
               owner: str | None = None) -> SubmissionRef:
        """``owner`` is ignored: the server takes it from the token."""
        body: dict[str, Any] = {"specYaml": spec.to_yaml(), "runName": run_id}
        if labels:
            body["labels"] = labels
        return self._ref(self._request("POST", _RUNS, json=body, source=getattr(spec, "_source", None)))

    def status(self, ref: SubmissionRef) -> RunStatus:
        return self._ref(self._request("GET", f"{_RUNS}/{ref.run_id}")).status  # type: ignore[return-value]

    def get(self, run_id: str) -> SubmissionRef:
        return self._ref(self._request("GET", f"{_RUNS}/{run_id}"))

    def list(self) -> list[SubmissionRef]:
        return [self._ref(d) for d in self._request("GET", _RUNS, params={"limit": 1000})["items"]]

    def cancel(self, ref: SubmissionRef) -> RunStatus:
        return self._ref(self._request("POST", f"{_RUNS}/{ref.run_id}:cancel")).status  # type: ignore[return-value]

    def logs(self, ref: SubmissionRef, follow: bool = False, tail_lines: int | None = None) -> Iterator[str]:
        params: dict[str, Any] = {"follow": "true" if follow else "false"}
        if tail_lines:
            params["tailLines"] = tail_lines
        try:
            with self._http.stream("GET", f"{_RUNS}/{ref.run_id}/logs", params=params,
                                   timeout=httpx.Timeout(30.0, read=None) if follow else self._http.timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise(r)
                yield from r.iter_lines()
        except httpx.HTTPError as exc:
            raise ExecutorError(f"lost the log stream from {self.url}", got=str(exc)[:300], retryable=True) from None
        except AimassError:
            raise
