"""Render a rich renderable at a given width and check that nothing in it was cut."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

__all__ = ["render", "assert_not_cut"]

_VERTICAL = "│┃║|"
_BOX = set("─━═┏┓┗┛┡┩┢┪┣┫┳┻╇╈╋┬┴┼├┤┌┐└┘╭╮╰╯╞╡╪")


def render(renderable: Any, width: int) -> str:
    """The plain text a terminal ``width`` columns wide shows for ``renderable``."""
    console = Console(width=width, record=True, force_terminal=False, color_system=None, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def assert_not_cut(text: str, width: int, cells: list[str]) -> None:
    """No ``…``, no line past ``width``, every table line closed by its right border, and each cell's text
    found whole in its column once the column's folded pieces are joined again."""
    assert "…" not in text, f"a cell was cut to an ellipsis at {width} columns:\n{text}"
    lines = text.rstrip("\n").splitlines()
    assert all(len(ln.rstrip()) <= width for ln in lines), f"a line is wider than {width}:\n{text}"
    table_lines = [ln.rstrip() for ln in lines if ln.strip() and (ln.strip()[0] in _VERTICAL or ln.strip()[0] in _BOX)]
    for ln in table_lines:
        assert ln[-1] in _VERTICAL or ln[-1] in _BOX, f"the table's right edge is cut at {width} columns:\n{text}"
    # join each column's pieces across the table's lines (cells fold onto several lines)
    columns: dict[int, str] = {}
    for ln in table_lines:
        if ln.strip()[0] not in _VERTICAL:
            continue
        for i, piece in enumerate(re.split(f"[{_VERTICAL}]", ln.strip())[1:-1]):
            columns[i] = columns.get(i, "") + piece
    joined = "\n".join(_squash(c) for c in columns.values()) if columns else _squash(text)
    for cell in cells:
        assert _squash(cell) in joined, f"cell {cell!r} is not shown whole at {width} columns:\n{text}"
