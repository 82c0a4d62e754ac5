"""``aimass run``, ``aimass ui`` and ``aimass down``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aimass.cli.common import OUTPUT_OPTION, Output, console, emit_json, err_console, fail
from aimass.exceptions import AimassError

__all__ = ["register"]


def run(
    file: Optional[Path] = typer.Argument(None, help="Pipeline YAML. Optional with --resume (the stored spec is used)."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Use this id for the new run (letters, digits, '-', '_')."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue a failed or killed run from its last completed step."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="AIMASS_RAY_ADDRESS",
                                              help="Existing Ray cluster; a local one is started when unset."),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Run a pipeline end to end (data -> train -> evaluate -> register -> deploy).

    Examples:

      aimass run pipelines/quickstart.yaml

      aimass run pipelines/quickstart.yaml --output json | jq .status

      aimass run --resume 20261122-134535-fd6b14
    """
    from aimass.settings import Settings
    from aimass.spec import load_pipeline, parse_pipeline

    try:
        settings = Settings.load(ray_address=ray_address)
        if resume:
            from aimass.orchestrator.state import load_run

            stored = load_run(settings, resume)
            spec = load_pipeline(file) if file else parse_pipeline(stored.spec, source=f"run {resume}")
        elif file is None:
            raise typer.BadParameter("give a pipeline FILE (or --resume RUN_ID)")
        else:
            spec = load_pipeline(file)
    except AimassError as exc:
        fail(exc, output)
        return

    from aimass.orchestrator import run_pipeline

    observer = None
    if output == Output.text and console.is_terminal:
        from aimass.cli.progress import LiveProgress

        observer = LiveProgress(console)
    elif output == Output.text:
        from aimass.cli.progress import LiveProgress

        observer = LiveProgress(console)
    try:
        if output == Output.text:
            console.print(f"[dim]Ray: {settings.ray_address or 'local cluster'} · tracking: {settings.tracking_uri} · "
                          f"artifacts: {settings.artifact_root}[/]")
        state = run_pipeline(spec, settings, run_id=resume or run_id, resume=bool(resume), observer=observer)
    except AimassError as exc:
        if observer:
            observer.stop()
        fail(exc, output)
        return
    except KeyboardInterrupt:
        if observer:
            observer.stop()
        err_console.print("interrupted: continue with `aimass run --resume <run id>` (see `aimass runs list`)")
        raise typer.Exit(130) from None
    if output == Output.json:
        d = state.to_dict()
        d.pop("spec", None)
        emit_json(d)
    else:
        from aimass.cli.progress import mlflow_ui_hint, next_steps, summary_table

        if observer is not None and not console.is_terminal:
            console.print()  # the live view's last line has no newline of its own when not on a terminal
        console.print(summary_table(state))
        lines = next_steps(state, str(file) if file else None, settings) if state.status == "SUCCEEDED" else None
        if lines:
            console.print()
            for line in lines:  # soft wrap: each command stays one line to copy, however narrow the terminal
                console.print(line, soft_wrap=True, highlight=False)
        else:
            console.print(mlflow_ui_hint(state), soft_wrap=True, highlight=False)
        if state.status != "SUCCEEDED":
            console.print(f"[red]{(state.error or {}).get('message', 'failed')}[/]\nFix it, then: aimass run --resume {state.run_id}")
    raise typer.Exit(0 if state.status == "SUCCEEDED" else 1)


def ui(port: int = typer.Option(5000, help="Port of the MLflow UI."), host: str = typer.Option("127.0.0.1")) -> None:
    """Open the MLflow UI on the embedded tracking store.

    Example:

      aimass ui --port 5000
    """
    import os
    import sys

    from aimass.settings import Settings

    s = Settings.load()
    if s.tracking_uri.startswith("http"):
        console.print(f"MLflow UI: {s.tracking_uri}")
        return
    console.print(f"MLflow UI on http://{host}:{port} (tracking {s.tracking_uri}); Ctrl-C to stop")
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", s.tracking_uri,
                              "--host", host, "--port", str(port), *(["--default-artifact-root", s.mlflow_artifact_location]
                                                                   if s.mlflow_artifact_location else [])])


def down() -> None:
    """Stop the local Ray cluster (and every model it serves).

    Example:

      aimass down
    """
    from aimass.orchestrator.ray_runtime import stop_local_cluster
    from aimass.settings import aimass_home

    console.print("stopped the local Ray cluster" if stop_local_cluster(aimass_home()) else "no local Ray cluster was running")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("ui")(ui)
    app.command("down")(down)
