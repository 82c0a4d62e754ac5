"""Shared CLI plumbing: output modes, error rendering, consoles."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aimass.exceptions import AimassError

__all__ = ["Output", "console", "err_console", "emit_json", "fail", "run_app", "OUTPUT_OPTION", "table"]

console = Console()
err_console = Console(stderr=True)


class Output(str, Enum):
    text = "text"
    json = "json"


OUTPUT_OPTION = typer.Option(Output.text, "--output", "-o", help="text for people, json for scripts.")


def table(*columns: str | tuple[str, dict[str, Any]], title: str | None = None, **kw: Any) -> Table:
    """A table that stays readable at 80 columns: every cell folds onto more lines, none is cut to ``…``.

    Args:
        columns: header names, or ``(name, column options)`` pairs (``justify``, ``style``;
            ``no_wrap`` for short cells and ids people copy, so the free-text columns fold instead; no
            ``min_width``: a minimum wider than the terminal allows crops the table).
        title: shown above the table, left-aligned.
        kw: further :class:`rich.table.Table` options.

    Example:
        >>> t = table("step", ("duration", {"justify": "right"}), title="run 1")
        >>> t.add_row("train", "12.0s")
    """
    t = Table(title=title, title_justify="left", **kw)
    for col in columns:
        name, opts = (col, {}) if isinstance(col, str) else col
        t.add_column(name, **{"overflow": "fold", "no_wrap": False, **opts})
    return t


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(exc: AimassError, output: Output = Output.text, code: int = 1) -> None:
    """Print an AI Mass error for people (red, with the fix) or as JSON, then exit."""
    if output == Output.json:
        emit_json(exc.to_dict())
    else:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run_app(app: typer.Typer) -> int:
    try:
        rv = app(standalone_mode=False)
    except AimassError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:
        # Usage errors (a missing option, a bad value): typer >= 0.24 raises those of its own vendored click,
        # which are not click.ClickException; both kinds have show() and an exit code.
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        raise
    return rv if isinstance(rv, int) else 0
