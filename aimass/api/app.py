"""The control-plane REST API: the only thing outside the cluster that creates RayJobs.

Routes (all ``/v1`` routes need ``Authorization: Bearer <token>``):

* ``POST /v1/pipelines/runs``: submit ``{"spec": {...}}`` or ``{"specYaml": "..."}`` (+ ``runName``,
  ``labels``), or the pipeline file itself with ``Content-Type: application/yaml``; validated with the same :func:`aimass.spec.parse_pipeline` as the CLI (422 lists every
  problem with its line). Fields the server owns (status, owner, namespace, service account, image,
  entrypoint, ...) are refused with 422 naming the field.
* ``GET /v1/pipelines/runs``, ``GET /v1/pipelines/runs/{run_id}``: your runs (admins: everyone's).
* ``GET /v1/pipelines/runs/{run_id}/logs?tailLines=N&follow=true``: the driver's log, text/plain.
* ``POST /v1/pipelines/runs/{run_id}:cancel``: stop a run.
* ``GET /healthz`` (alive), ``GET /readyz`` (backend reachable), ``GET /openapi.json``.
* ``GET /metrics``: Prometheus text (requests by route and status, latency, submissions, auth
  failures, rate-limited requests); it needs a token like the ``/v1`` routes.

Limits: bodies over ``max_body_bytes`` get 413 before parsing (Content-Length or while streaming);
each identity has a token bucket (429 + ``Retry-After``); failed authentications are rate limited
per client address. The owner of a run is the identity of the token that submitted it.

Example:
    >>> app = create_app(ApiConfig(tokens={"s3cr3t-token-0123456789": "alice"}), backend=my_executor)
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8080)   # doctest: +SKIP
"""

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from aimass.api.config import ApiConfig
from aimass.api.metrics import CONTENT_TYPE_LATEST, ApiMetrics
from aimass.api.models import SERVER_OWNED_FIELDS, ErrorBody, Health, RunList, RunOut, SubmitRunRequest
from aimass.api.security import BodyLimitMiddleware, RateLimiter, YamlBodyMiddleware, authenticate_header, retry_after_header
from aimass.exceptions import AimassError, AuthError, InvalidRequestError, NotFoundError, SpecError
from aimass.orchestrator.executors.base import RUN_ID_PATTERN, UNKNOWN, Executor, SubmissionRef, new_run_id

__all__ = ["create_app", "RateLimitedError", "ServerMisconfiguredError", "API_VERSION"]

API_VERSION = "v1"
_MAX_SPEC_DEPTH = 32
_MAX_SPEC_NODES = 50_000


class RateLimitedError(AimassError):
    code = "rate_limited"
    http_status = 429
    retryable = True


class ServerMisconfiguredError(AimassError):
    """The control plane cannot do its job as deployed: an operator must change a setting (named in ``fix``).

    A server-side fault, so a 5xx: no change to the request would help.
    """

    code = "server_misconfigured"
    http_status = 500
    retryable = False


class _RunIdConvertor(Convertor):
    """A ``{run_id:runid}`` path segment: one segment without ``:`` (run ids have none), so ``/runs/x:cancel``
    is the cancel route's alone, and a method the cancel route lacks gets 405 with *its* ``Allow``. The
    run-id pattern itself is checked by the route (422 naming it), not by routing (a bare 404)."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("runid", _RunIdConvertor())


def _backend_problem(backend: Executor) -> ServerMisconfiguredError | None:
    """What in the server's own configuration stops ``backend`` from running pipelines, if anything."""
    if getattr(backend, "backend", None) == "k8s" and not getattr(backend, "image", None):
        return ServerMisconfiguredError(
            "the control plane has no container image for the Ray pods of a run",
            fix="Operator: set AIMASS_RAY_IMAGE on the control-plane server to an image with aimass and Ray "
                "(Helm: ray.image.repository / ray.image.tag) and restart it.")
    return None


class _HeaderError:
    """Mixin: an error that carries response headers (WWW-Authenticate, Retry-After)."""

    headers: dict[str, str] = {}


class _Unauthorized(_HeaderError, AuthError):
    pass


class _Limited(_HeaderError, RateLimitedError):
    pass


def _error_responses(*codes: int, text_route: bool = False) -> dict[int | str, dict[str, Any]]:
    """The documented error answers. On a route whose 200 is text/plain (``text_route``), FastAPI would
    document a ``model`` under the route's own media type; errors are JSON everywhere, so they are
    spelled out as such."""
    text = {400: "Bad request", 401: "Missing or invalid bearer token", 404: "No such run (or not yours)",
            409: "A run with this id exists", 413: "Body too large", 422: "Invalid request or pipeline spec",
            429: "Rate limited (see Retry-After)", 502: "The cluster backend failed", 503: "The cluster backend is unavailable"}
    text[500] = "Unexpected server error, or a server misconfiguration (`fix` names the setting)"
    if text_route:
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        return {c: {"description": text[c], "content": ref} for c in codes}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


_COMMON = (400, 401, 404, 413, 422, 429, 500, 502, 503)


def _check_shape(obj: Any) -> None:
    """Bound the size of a JSON spec object (YAML specs get the same limits in the loader)."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        cur, depth = stack.pop()
        nodes += 1
        if nodes > _MAX_SPEC_NODES:
            raise SpecError(f"the spec has more than {_MAX_SPEC_NODES} values", location="spec", fix="Keep data out of the spec.")
        if depth > _MAX_SPEC_DEPTH:
            raise SpecError(f"the spec is nested deeper than {_MAX_SPEC_DEPTH} levels", location="spec", fix="Flatten the spec.")
        if isinstance(cur, dict):
            stack.extend((v, depth + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, depth + 1) for v in cur)


def _only_query(*allowed: str) -> Callable[[Request], None]:
    """A dependency refusing query parameters the route does not define (as the body refuses unknown fields)."""

    def check(request: Request) -> None:
        extra = sorted(set(request.query_params.keys()) - set(allowed))
        if extra:
            raise _UnknownQuery(f"unknown query parameter `{extra[0]}`", location=f"query.{extra[0]}",
                                      fix=f"Allowed: {', '.join(allowed)}." if allowed else "This route takes no query parameters.")
    return check


class _UnknownQuery(InvalidRequestError):
    http_status = 422


def _run_out(ref: SubmissionRef) -> RunOut:
    st = ref.status
    return RunOut(run_id=ref.run_id, pipeline=ref.pipeline, state=st.state if st else UNKNOWN,
                  message=st.message if st else None, owner=ref.owner, namespace=ref.namespace, backend=ref.backend,
                  submitted_at=ref.submitted_at, started_at=st.started_at if st else None,
                  finished_at=st.finished_at if st else None, labels=ref.labels,
                  details={k: v for k, v in (st.details if st else {}).items() if v is not None})


def _validation_error_body(exc: RequestValidationError) -> dict[str, Any]:
    items = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        field = ".".join(loc)
        typ = e.get("type", "")
        if typ == "extra_forbidden" and len(loc) == 1 and loc[0] in SERVER_OWNED_FIELDS:
            items.append({"error": "server_owned_field", "message": f"`{field}` is set by the server and cannot be set by clients",
                          "got": None, "fix": "Remove it: the server decides where and how a run executes "
                                              "(namespace, service account, image, entrypoint, owner, status).",
                          "location": field, "retryable": False})
        elif typ == "extra_forbidden":
            items.append({"error": "invalid_request", "message": f"unknown field `{field}`", "got": None,
                          "fix": "Allowed fields: spec, specYaml, runName, labels.", "location": field, "retryable": False})
        elif typ == "json_invalid":
            items.append({"error": "invalid_request", "message": "the request body is not valid JSON", "got": None,
                          "fix": "Send a JSON object with spec or specYaml.", "location": "body", "retryable": False})
        else:
            got = e.get("input")
            if not isinstance(got, (str, int, float, bool)) or isinstance(got, str) and len(got) > 200:
                got = None
            items.append({"error": "invalid_request", "message": f"`{field}`: {e.get('msg')}" if field else str(e.get("msg")),
                          "got": got, "fix": None, "location": field or None, "retryable": False})
    head = items[0] if len(items) == 1 else {
        "error": "invalid_request", "message": f"{len(items)} problems in the request", "got": None,
        "fix": "See errors.", "location": None, "retryable": False}
    return {**head, "errors": items}


def create_app(config: ApiConfig | None = None, *, backend: Executor | None = None,
               backend_factory: Callable[[], Executor] | None = None, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """Build the API.

    Args:
        config: tokens and limits (default :meth:`ApiConfig.from_env`); refused without a token
            unless ``insecure_local``.
        backend: the executor runs go to (tests inject one over a fake Kubernetes transport).
        backend_factory: builds it on first use instead (default: Kubernetes from the environment,
            or the Ray Jobs API when ``config.backend == "ray"``).
        clock: for the rate limiter.
    """
    config = config or ApiConfig.from_env()
    config.check()
    app = FastAPI(
        title="AI Mass control plane",
        version="1.0.0",
        summary="Submit and follow pipeline runs on the cluster.",
        docs_url=None, redoc_url=None, openapi_url="/openapi.json",
    )
    app.add_middleware(YamlBodyMiddleware, path="/v1/pipelines/runs")  # inner: sees bodies already bounded
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    metrics = ApiMetrics()
    limiter = RateLimiter(config.rate_per_s, config.burst, clock)
    failed_auth = RateLimiter(max(1.0, config.rate_per_s), max(10, config.burst), clock)
    bearer = HTTPBearer(auto_error=False, description="A token from the server's AIMASS_API_TOKEN_FILE.")

    lock = threading.Lock()
    holder: dict[str, Any] = {"backend": backend, "ready_at": 0.0, "ready_err": None}

    def default_factory() -> Executor:
        if config.backend == "ray":
            from aimass.orchestrator.executors.ray_jobs import RayJobsExecutor

            return RayJobsExecutor()
        from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor.from_env()

    def get_backend() -> Executor:
        with lock:
            if holder["backend"] is None:
                holder["backend"] = (backend_factory or default_factory)()
            return holder["backend"]

    # --- errors ---------------------------------------------------------------------------------
    @app.exception_handler(AimassError)
    async def _aimass_error(request: Request, exc: AimassError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=getattr(exc, "headers", None) or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_error_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "invalid_request")
        fix = {413: "Send a smaller pipeline spec (keep data out of it).",
               404: "See GET /openapi.json for the routes."}.get(exc.status_code)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route with this path; a path can have several (GET and
            # POST /v1/pipelines/runs are two routes).
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            fix = f"This path takes {', '.join(allowed)}."
        return JSONResponse({"error": code, "message": str(exc.detail), "got": None, "fix": fix, "location": None,
                             "retryable": False}, status_code=exc.status_code, headers=headers or None)

    def _allowed_methods(request: Request) -> list[str]:
        scope = {"type": "http", "path": request.url.path, "method": "", "root_path": request.scope.get("root_path", "")}
        methods: set[str] = set()
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                methods |= set(getattr(route, "methods", None) or ())
        return sorted(methods)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - bugs
        import logging

        logging.getLogger("aimass.api").exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal_error", "message": "internal error", "got": None,
                             "fix": "Retry; if it persists, report it with the server logs.", "location": None,
                             "retryable": True}, status_code=500)

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        route = request.scope.get("route")
        # the template as documented (`{run_id}`), not with its convertor (`{run_id:runid}`)
        template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
        metrics.observe(request.method, template, response.status_code, time.perf_counter() - t0)
        return response

    # --- auth -----------------------------------------------------------------------------------
    def principal(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> str:
        if config.insecure_local:
            identity = "local"
        else:
            header = request.headers.get("authorization")
            identity = authenticate_header(header, config.tokens)
            if identity is None:
                metrics.auth_failures.inc()
                client = request.client.host if request.client else "unknown"
                wait = failed_auth.take(client)
                if wait:
                    err = _Limited("too many failed authentications from this address", fix="Wait and use a valid token.")
                    err.headers = {"Retry-After": retry_after_header(wait)}
                    raise err
                err = _Unauthorized("missing or invalid bearer token" if header else "authentication required",
                                    fix="Send `Authorization: Bearer <token>` with a token from the server's token file.")
                err.headers = {"WWW-Authenticate": 'Bearer realm="aimass"' + (', error="invalid_token"' if header else "")}
                raise err
        wait = limiter.take(identity)
        if wait:
            metrics.rate_limited.inc()
            err = _Limited("rate limit exceeded", got=f"{config.rate_per_s:g}/s, burst {config.burst}",
                           fix=f"Retry after {retry_after_header(wait)} s.")
            err.headers = {"Retry-After": retry_after_header(wait)}
            raise err
        return identity

    Principal = Annotated[str, Depends(principal)]
    RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN, max_length=40, description="The run id.")]

    def may_see(ref: SubmissionRef, identity: str) -> bool:
        return config.insecure_local or identity in config.admins or ref.owner == identity

    def find(run_id: str, identity: str) -> SubmissionRef:
        try:
            ref = get_backend().get(run_id)
        except NotFoundError:
            ref = None
        if ref is None or not may_see(ref, identity):
            raise NotFoundError(f"no run {run_id!r}", fix="See GET /v1/pipelines/runs for your runs.")
        return ref

    # --- routes ---------------------------------------------------------------------------------
    @app.post("/v1/pipelines/runs", status_code=201, response_model=RunOut, tags=["runs"],
              responses=_error_responses(*_COMMON, 409), summary="Submit a pipeline run",
              dependencies=[Depends(_only_query())],
              openapi_extra={"requestBody": {"content": {"application/yaml": {"schema": {
                  "type": "string", "minLength": 1, "pattern": r"\S",
                  "description": "The pipeline file itself (same as {\"specYaml\": ...} in JSON)."}}}}})
    def submit_run(body: SubmitRunRequest, identity: Principal, request: Request) -> JSONResponse:
        from aimass.spec import parse_pipeline

        be = get_backend()
        problem = _backend_problem(be)
        if problem is not None:  # the server's fault, whatever the request: say so before judging the request
            raise problem
        if body.spec is not None:
            _check_shape(body.spec)
            spec = parse_pipeline(body.spec, source="spec")
        else:
            spec = parse_pipeline(body.spec_yaml or "", source="specYaml")
        run_id = body.run_name or new_run_id()
        ref = be.submit(spec, run_id, labels=dict(body.labels), owner=identity)
        metrics.submissions.inc()
        out = _run_out(ref).model_dump(mode="json", by_alias=True)
        return JSONResponse(out, status_code=201, headers={"Location": f"/v1/pipelines/runs/{ref.run_id}"})

    @app.get("/v1/pipelines/runs", response_model=RunList, tags=["runs"], responses=_error_responses(*_COMMON),
             summary="List runs", dependencies=[Depends(_only_query("limit", "state"))])
    def list_runs(identity: Principal,
                  limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 100,
                  state: Annotated[str | None, Query(pattern=r"^(PENDING|RUNNING|SUCCEEDED|FAILED|CANCELLED|UNKNOWN)$",
                                                     description="Only runs in this state.")] = None) -> RunList:
        refs = [r for r in get_backend().list() if may_see(r, identity)]
        if state:
            refs = [r for r in refs if (r.status.state if r.status else UNKNOWN) == state]
        return RunList(items=[_run_out(r) for r in refs[:limit]])

    @app.get("/v1/pipelines/runs/{run_id:runid}", response_model=RunOut, tags=["runs"], responses=_error_responses(*_COMMON),
             summary="Get a run", dependencies=[Depends(_only_query())])
    def get_run(run_id: RunId, identity: Principal) -> RunOut:
        ref = find(run_id, identity)
        return _run_out(ref)

    # Errors are JSON like everywhere else; only the 200 answer is text/plain.
    @app.get("/v1/pipelines/runs/{run_id:runid}/logs", tags=["runs"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Log lines"},
                        **_error_responses(*_COMMON, text_route=True)},
             summary="The driver's log", dependencies=[Depends(_only_query("tailLines", "follow"))])
    def run_logs(run_id: RunId, identity: Principal,
                 tail_lines: Annotated[int | None, Query(alias="tailLines", ge=1, le=config.max_log_lines,
                                                         description="Only the last N lines.")] = None,
                 follow: Annotated[bool, Query(description="Keep streaming until the run ends.")] = False):
        ref = find(run_id, identity)
        be = get_backend()
        if not follow:
            lines = list(itertools.islice(be.logs(ref, follow=False, tail_lines=tail_lines or config.max_log_lines),
                                          config.max_log_lines))
            return PlainTextResponse("".join(line + "\n" for line in lines))
        it = iter(be.logs(ref, follow=True, tail_lines=tail_lines))
        first = next(it, None)  # surface errors (no such pod, ...) as a proper status, not a broken stream
        deadline = time.monotonic() + config.max_follow_s

        def stream() -> Iterator[str]:
            if first is not None:
                yield first + "\n"
                for line in it:
                    yield line + "\n"
                    if time.monotonic() > deadline:
                        yield f"[aimass] log stream closed after {config.max_follow_s:g}s; reconnect to continue\n"
                        return
        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")

    @app.post("/v1/pipelines/runs/{run_id:runid}:cancel", response_model=RunOut, tags=["runs"],
              responses=_error_responses(*_COMMON), summary="Cancel a run", dependencies=[Depends(_only_query())])
    def cancel_run(run_id: RunId, identity: Principal) -> RunOut:
        ref = find(run_id, identity)
        ref.status = get_backend().cancel(ref)
        return _run_out(ref)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], summary="Readiness: the backend answers",
             responses={503: {"model": Health, "description": "The backend is not reachable"}})
    def readyz() -> Any:
        now = time.monotonic()
        if now - holder["ready_at"] > 5.0:
            err = None
            try:
                be = get_backend()
                problem = _backend_problem(be)
                if problem is not None:
                    raise problem
                ready = getattr(be, "ready", None)
                if ready is not None:
                    ready()
            except AimassError as exc:
                err = str(exc)  # message and fix: an operator reads it
            except Exception as exc:  # a backend we cannot even build is simply not ready
                err = f"{type(exc).__name__}: {exc}"
            holder.update(ready_at=now, ready_err=err)
        if holder["ready_err"]:
            return JSONResponse({"status": "unavailable", "detail": holder["ready_err"][:500]}, status_code=503)
        return Health(status="ready")

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics of this API process", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"},
                        **_error_responses(400, 401, 413, 422, 429, 500, text_route=True)},
             dependencies=[Depends(_only_query())])
    def prometheus_metrics(identity: Principal) -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.state.config = config
    app.state.get_backend = get_backend
    return app
