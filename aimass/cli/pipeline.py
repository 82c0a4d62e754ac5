"""``aimass pipeline validate|schema|show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from aimass.cli.common import OUTPUT_OPTION, Output, console, emit_json, fail
from aimass.exceptions import AimassError

__all__ = ["register"]

pipeline_app = typer.Typer(help="Validate pipelines and export the spec schema.", no_args_is_help=True)


@pipeline_app.command("validate")
def validate(file: Path = typer.Argument(..., help="Pipeline YAML file."), output: Output = OUTPUT_OPTION) -> None:
    """Check a pipeline: YAML safety, fields, types, references, cycles, resources. Runs nothing.

    Example:

      aimass pipeline validate pipelines/quickstart.yaml
    """
    from aimass.spec import load_pipeline
    from aimass.spec.dag import topological_order

    try:
        spec = load_pipeline(file)
    except AimassError as exc:
        fail(exc, output, code=2)
        return
    order = topological_order({s.name: s.depends_on for s in spec.steps})
    if output == Output.json:
        emit_json({"valid": True, "pipeline": spec.name, "steps": order})
    else:
        console.print(f"[green]✔[/] {file}: pipeline [bold]{spec.name}[/] is valid ({len(order)} steps: {' → '.join(order)})")


@pipeline_app.command("schema")
def schema(out: Optional[Path] = typer.Option(None, "--out", help="Write to this file instead of stdout.")) -> None:
    """Print the JSON Schema of pipeline files (for editors and CI).

    Example:

      aimass pipeline schema --out pipeline.schema.json
    """
    from aimass.spec import json_schema

    text = json.dumps(json_schema(), indent=2)
    if out:
        out.write_text(text + "\n")
        console.print(f"wrote {out}")
    else:
        typer.echo(text)


@pipeline_app.command("show")
def show(file: Path = typer.Argument(...), output: Output = OUTPUT_OPTION) -> None:
    """Show the fully-defaulted pipeline, as the orchestrator will run it.

    Example:

      aimass pipeline show pipelines/quickstart.yaml -o json
    """
    from aimass.spec import load_pipeline

    try:
        spec = load_pipeline(file)
    except AimassError as exc:
        fail(exc, output, code=2)
        return
    full = spec.dump()
    for i, s in enumerate(spec.steps):
        full["spec"]["steps"][i]["config"] = s.parsed_config.dump()
    if output == Output.json:
        emit_json(full)
    else:
        import yaml

        console.print(yaml.safe_dump(full, sort_keys=False), highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
