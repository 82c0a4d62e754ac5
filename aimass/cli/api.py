"""``aimass api serve|openapi``: the control-plane REST API."""

from __future__ import annotations

import json
from typing import Optional

import typer

from aimass.cli.common import console, fail
from aimass.exceptions import AimassError

__all__ = ["register"]

api_app = typer.Typer(help="The control-plane REST API (submit, list, logs, cancel runs on the cluster).", no_args_is_help=True)


@api_app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 in a pod)."),
    port: int = typer.Option(8080, "--port", min=1, max=65535),
    insecure_local: bool = typer.Option(False, "--insecure-local", help="No authentication; only on a loopback address (development)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="k8s (default) or ray; default AIMASS_API_BACKEND."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the control-plane API. Refuses to start without a token (AIMASS_API_TOKEN_FILE).

    Examples:

      AIMASS_API_TOKEN_FILE=/etc/aimass/token aimass api serve --host 0.0.0.0 --port 8080

      aimass api serve --insecure-local --backend ray
    """
    import uvicorn

    from aimass.api import ApiConfig, create_app

    try:
        cfg = ApiConfig.from_env(insecure_local=insecure_local)
        if backend:
            cfg.backend = backend
        if cfg.backend not in ("k8s", "ray"):
            from aimass.exceptions import InvalidRequestError

            raise InvalidRequestError("unknown API backend", got=cfg.backend, fix="Use k8s or ray.")
        cfg.check(host)
        app = create_app(cfg)
    except AimassError as exc:
        fail(exc)
        return
    if insecure_local:
        console.print("[yellow]warning:[/] --insecure-local: no authentication; listening on loopback only")
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False,
                timeout_keep_alive=5, limit_concurrency=256)


@api_app.command("openapi")
def openapi() -> None:
    """Print the API's OpenAPI document.

    Example:

      aimass api openapi > openapi.json
    """
    from aimass.api import ApiConfig, create_app

    app = create_app(ApiConfig(insecure_local=True), backend_factory=lambda: None)  # type: ignore[arg-type,return-value]
    typer.echo(json.dumps(app.openapi(), indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(api_app, name="api")
