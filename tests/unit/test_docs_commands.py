"""Every `aimass ...` command named in README.md, docs/*.md and the package's own messages exists in the CLI.

The command tree comes from the real typer app (walked through click, nothing invoked), so a renamed
or removed command fails here instead of in a user's shell.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from aimass.cli.main import app

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_SEPARATORS = re.compile(r"&&|\|\||[;|()]")
_WORD = re.compile(r"^[a-z][a-z0-9-]*$")


def command_tree():
    """The root command; groups have ``commands`` (typer vendors click, so no isinstance on click's classes)."""
    return typer.main.get_command(app)


def is_group(cmd) -> bool:
    return isinstance(getattr(cmd, "commands", None), dict)


def _all_subcommand_names(cmd) -> set[str]:
    names: set[str] = set()
    if is_group(cmd):
        for name, sub in cmd.commands.items():
            names.add(name)
            names |= _all_subcommand_names(sub)
    return names


def invocations(text: str) -> list[str]:
    """The ``aimass ...`` command lines in a text: markdown code blocks and inline code spans (`...`)."""
    candidates: list[str] = []
    for block in _FENCE.findall(text):
        candidates.extend(block.splitlines()[1:-1])
    for span in _INLINE.findall(_FENCE.sub("", text)):
        candidates.append(span)
    out = []
    for line in candidates:
        for part in _SEPARATORS.split(line):
            part = part.strip().removeprefix("$ ").strip()
            if part.startswith("aimass ") or part == "aimass":
                out.append(part)
    return out


def problem(line: str, root, subcommand_names: set[str]) -> str | None:
    """Why ``line`` does not name a command of ``root``, or None when it does."""
    words = line.split()[1:]
    cmd, path = root, ["aimass"]
    for word in words:
        if word.startswith("-") or not _WORD.match(word):
            break  # an option or an argument (a path, a URI, a placeholder)
        if is_group(cmd):
            sub = cmd.commands.get(word)
            if sub is None:
                return f"`{' '.join(path)}` has no command {word!r} (it has: {', '.join(sorted(cmd.commands))})"
            cmd, path = sub, path + [word]
            continue
        # a leaf command's first bare word: an argument, unless it is a subcommand name put under the wrong parent
        if word in subcommand_names:
            return f"`{' '.join(path)}` is a command, not a group: {word!r} would be taken as its argument"
        break
    return None


def test_walker_sees_the_real_command_tree():
    root = command_tree()
    assert is_group(root)
    assert {"pipeline", "run", "serve", "serving", "models"} <= set(root.commands)
    names = _all_subcommand_names(root)
    assert problem("aimass serving status", root, names) is None
    assert problem("aimass serve models:/digits@champion --replicas 2", root, names) is None
    # the three kinds of mistake the check exists for
    assert "is a command, not a group" in problem("aimass serve status", root, names)
    assert "has no command 'register'" in problem("aimass models register", root, names)
    assert "has no command 'nosuch'" in problem("aimass nosuch", root, names)


def test_every_aimass_command_in_the_docs_exists(repo_root: Path):
    root = command_tree()
    names = _all_subcommand_names(root)
    # the docs, and the messages, help and docstrings of the package (an error's fix names commands too)
    files = [repo_root / "README.md", *sorted((repo_root / "docs").glob("*.md")), *sorted((repo_root / "aimass").rglob("*.py"))]
    seen = 0
    problems = []
    for f in files:
        for line in invocations(f.read_text()):
            seen += 1
            why = problem(line, root, names)
            if why:
                problems.append(f"{f.relative_to(repo_root)}: `{line}`: {why}")
    assert seen > 10, "the docs name almost no aimass commands: is the extraction broken?"
    assert not problems, "\n".join(problems)
