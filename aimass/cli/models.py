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


GATED_ALIASES = ("champion",)


@models_app.command("promote")
def promote(name: str = typer.Argument(..., help="Registered model name."),
            version: str = typer.Argument(..., help="Version number to point the alias at."),
            alias: str = typer.Option("champion", "--alias", "-a", help="Alias to move."),
            force: bool = typer.Option(False, "--force", help="Move a gated alias (champion) without the register gate."),
            reason: str = typer.Option("", "--reason", help="Why (required with --force; recorded on the version)."),
            output: Output = OUTPUT_OPTION) -> None:
    """Point an alias at a version by hand. `champion` moves only through the register gate, unless --force with a
    --reason, which is recorded on the version (tags aimass.manual_promotion*).

    Example:

      aimass models promote digits 3 --alias champion --force --reason "rollback after incident 42"
    """
    import getpass
    import time

    from aimass.exceptions import InvalidRequestError
    from aimass.settings import Settings
    from aimass.tracking import Tracker

    try:
        if alias in GATED_ALIASES and not force:
            raise InvalidRequestError(f"{alias!r} moves only through the register gate", got=f"{name} v{version}",
                                      fix="Re-run the pipeline's register step, or pass --force --reason \"...\" to move it by hand.")
        if force and not reason.strip():
            raise InvalidRequestError("--force needs a --reason, which is recorded on the version", got="--reason ''",
                                      fix='Add --reason "why this version must serve now".')
        s = Settings.load()
        tracker = Tracker(s.tracking_uri, s.registry_uri, retry_for_s=5)
        if not any(v["version"] == str(version) for v in tracker.model_versions(name)):
            raise InvalidRequestError(f"model {name!r} has no version {version}", got=version,
                                      fix=f"See `aimass models versions {name}`.")
        previous = tracker.version_by_alias(name, alias)
        tracker.set_alias(name, alias, str(version))
        if force:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for key, value in {"aimass.manual_promotion": alias, "aimass.manual_promotion_reason": reason.strip()[:5000],
                               "aimass.manual_promotion_by": getpass.getuser(), "aimass.manual_promotion_at": stamp,
                               "aimass.manual_promotion_previous": previous["version"] if previous else ""}.items():
                tracker.set_model_version_tag(name, str(version), key, value)
    except AimassError as exc:
        fail(exc, output)
        return
    out = {"name": name, "alias": alias, "version": str(version), "previous": previous["version"] if previous else None,
           "forced": force}
    if output == Output.json:
        emit_json(out)
    else:
        console.print(f"{name}@{alias} -> v{version}" + (f" (was v{out['previous']})" if out["previous"] else "")
                      + (" [forced, reason recorded on the version]" if force else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
