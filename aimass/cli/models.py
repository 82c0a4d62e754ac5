"""``aimass models list|versions``."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from aimass.cli.common import OUTPUT_OPTION, Output, console, emit_json, fail, table
from aimass.exceptions import AimassError

__all__ = ["register"]

models_app = typer.Typer(help="The model zoo and the model registry.", no_args_is_help=True)


@models_app.command("list")
def list_models(output: Output = OUTPUT_OPTION) -> None:
    """Models of the zoo, usable as `model:` in a train step.

    Example:

      aimass models list
    """
    from aimass.models import describe_models

    rows = describe_models()
    if output == Output.json:
        emit_json(rows)
        return
    console.print(zoo_table(rows))


@models_app.command("versions")
def versions(name: str = typer.Argument(..., help="Registered model name."), output: Output = OUTPUT_OPTION) -> None:
    """Versions of a registered model with their aliases and gate results.

    Example:

      aimass models versions digits
    """
    from aimass.settings import Settings
    from aimass.tracking import Tracker

    s = Settings.load()
    try:
        rows = Tracker(s.tracking_uri, s.registry_uri, retry_for_s=5).model_versions(name)
    except AimassError as exc:
        fail(exc, output)
        return
    rows.sort(key=lambda r: int(r["version"]))
    if output == Output.json:
        emit_json(rows)
        return
    console.print(versions_table(rows))


def zoo_table(rows: list[dict[str, Any]]) -> Table:
    """The model zoo: one row per model with its description."""
    t = table(("name", {"no_wrap": True}), "description")
    for r in rows:
        t.add_row(r["name"], r["description"])
    return t


def versions_table(rows: list[dict[str, Any]]) -> Table:
    """Versions of a registered model: aliases, gate result, accuracy and the MLflow run."""
    t = table(("version", {"justify": "right", "no_wrap": True}), "aliases", ("gate", {"no_wrap": True}),
              ("accuracy", {"no_wrap": True}), "run")
    for r in rows:
        t.add_row(r["version"], ", ".join(r["aliases"]), r["tags"].get("aimass.gate", ""), r["tags"].get("metric.accuracy", ""),
                  r["run_id"] or "")
    return t


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
