"""The ``aimass`` command. One module per noun; each exposes ``register(app)``.

Heavy imports (Ray, torch, mlflow) happen inside commands, so ``aimass --help`` and
``aimass pipeline validate`` stay fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="aimass",
    help="AI Mass: one pipeline from data to a served model, on a laptop or a Kubernetes cluster.\n\n"
    "Examples:\n\n"
    "  aimass run pipelines/quickstart.yaml\n\n"
    "  aimass pipeline validate pipelines/quickstart.yaml\n\n"
    "  aimass serve models:/digits@champion && aimass predict digits --input '[[0, 1, ...]]'",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=True,
)

# Noun modules under aimass.cli; a module missing from an install is skipped, never fatal.
NOUNS = ("pipeline", "run", "runs", "models", "serve", "submit", "api", "doctor")


def _register_all() -> None:
    for noun in NOUNS:
        try:
            mod = importlib.import_module(f"aimass.cli.{noun}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("aimass.cli"):
                continue
            raise
        mod.register(app)


_register_all()


def main() -> None:
    from aimass.cli.common import run_app

    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
