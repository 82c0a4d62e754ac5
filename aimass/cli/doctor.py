"""``aimass doctor``: is this machine ready to run AI Mass? One line per check, with the fix for each problem."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from aimass.cli.common import OUTPUT_OPTION, Output, console, emit_json

__all__ = ["checks_table", "register"]

_ICON = {"ok": "[green]✔[/]", "warn": "[yellow]![/]", "fail": "[red]✘[/]"}


def checks_table(checks: list[Any]) -> Table:
    """One row per check (icon, name, what was found); a failure or warning gets its fix on the next row."""
    from rich.markup import escape

    t = Table.grid(padding=(0, 1))
    t.add_column(no_wrap=True)
    t.add_column(no_wrap=True, style="bold")
    t.add_column(overflow="fold")
    for c in checks:
        t.add_row(_ICON.get(c.status, "?"), c.name, escape(c.detail))
        if c.fix and c.status != "ok":
            t.add_row("", "", f"[cyan]fix:[/] {escape(c.fix)}")
    return t


def doctor(
    only: Optional[list[str]] = typer.Option(None, "--check", "-c", help="Run only this check (repeatable): python, packages, "
                                             "torch, gpus, ports, local-cluster, serve, tracking, artifacts, ray-address, shm, "
                                             "disk, tokens."),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Check this machine and the configuration: versions, torch build, GPUs, free ports, a stale local cluster
    or serve app, the tracking URI, the artifact store, the Ray address, shared memory, disk and token files.

    Every probe has a timeout: it answers within seconds even when a server is down. Exits 1 when a check
    fails (warnings do not fail).

    Examples:

      aimass doctor

      aimass doctor --output json | jq '.checks[] | select(.status != "ok")'

      aimass doctor --check tracking --check artifacts
    """
    import time

    from aimass.diagnostics import CHECKS, run_checks

    names = [n for n, _, _ in CHECKS]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise typer.BadParameter(f"unknown check(s) {', '.join(unknown)}; the checks are: {', '.join(names)}", param_hint="--check")
    t0 = time.monotonic()
    checks = run_checks(only=only or None)
    failed = [c.name for c in checks if c.status == "fail"]
    if output == Output.json:
        emit_json({"ok": not failed, "failed": failed, "elapsed_s": round(time.monotonic() - t0, 2),
                   "checks": [c.to_dict() for c in checks]})
    else:
        console.print(checks_table(checks))
        warned = sum(c.status == "warn" for c in checks)
        console.print(f"\n[red]{len(failed)} check(s) failed: {', '.join(failed)}[/]" if failed else
                      f"\n[green]ready[/]{f' ({warned} warning(s))' if warned else ''}", highlight=False)
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
