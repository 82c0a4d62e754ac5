"""The README as a newcomer reads it: the two commands first, then what they ran and the examples, and every
command in a block marked ``<!-- runnable -->`` actually runs (``make quickstart`` and ``make test`` are
run by CI itself). A block is runnable when the line before its opening fence is ``<!-- runnable -->``."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import aimass_bin, cli_env
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
MARKER = "<!-- runnable -->"


def fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, body, runnable) of each fenced block, in order."""
    out = []
    for m in re.finditer(r"(?m)^```(\w*)\n(.*?)^```", text, re.S):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        out.append((m.group(1), m.group(2), before == MARKER))
    return out


def runnable_commands() -> list[str]:
    cmds = []
    for lang, body, runnable in fenced_blocks(README):
        if runnable:
            assert lang in ("bash", "sh", "console"), f"a runnable block must be shell, not {lang!r}"
            cmds += [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return cmds


def test_the_two_commands_come_first():
    blocks = fenced_blocks(README)
    assert [b[1].strip() for b in blocks[:2]] == ["make quickstart", "make test"]
    first_heading = README.index("\n## ")
    assert README.index("make quickstart") < README.index("make test") < first_heading
    assert "\n## What you just ran\n" in README and "\n## Examples\n" in README
    assert README.index("## What you just ran") < README.index("## Examples")


def test_what_you_just_ran_is_short():
    section = README.split("\n## What you just ran\n", 1)[1].split("\n## ", 1)[0]
    assert 5 <= len([ln for ln in section.splitlines() if ln.strip()]) <= 10


def test_the_examples_table_has_one_command_per_example_pipeline():
    section = README.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| [")]
    listed = {}
    for row in rows:
        cmd = re.findall(r"`(aimass run [^`]+)`", row)
        assert len(cmd) == 1, f"one command per example: {row}"
        listed[shlex.split(cmd[0])[-1]] = row
    from aimass.spec import load_pipeline

    for f in listed:
        assert (REPO / f).is_file(), f"the examples table names {f}, which does not exist"
        load_pipeline(REPO / f)  # and each one is valid
    missing = sorted(str(p.relative_to(REPO)) for p in (REPO / "pipelines").glob("*.yaml"))
    missing = [p for p in missing if p not in listed]
    assert not missing, f"add a row to README's examples table for: {', '.join(missing)}"


def test_there_are_runnable_blocks():
    cmds = runnable_commands()
    assert "aimass --help" in cmds and "aimass doctor --output json" in cmds


@pytest.mark.parametrize("command", runnable_commands())
def test_each_runnable_command_runs(command, tmp_path):
    argv = shlex.split(command)
    assert argv[0] == "aimass", f"runnable README commands are aimass commands: {command}"
    env = cli_env(AIMASS_HOME=str(tmp_path / "home"), AIMASS_RAY_PORT=str(free_port()),
                  AIMASS_RAY_DASHBOARD_PORT=str(free_port()), AIMASS_SERVE_PORT=str(free_port()), COLUMNS="80")
    for var in ("AIMASS_TRACKING_URI", "AIMASS_ARTIFACT_ROOT", "AIMASS_RAY_ADDRESS", "RAY_ADDRESS"):
        env.pop(var, None)
    out = subprocess.run([aimass_bin(), *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"$ {command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr
    if "--output" in argv and argv[argv.index("--output") + 1] == "json":
        json.loads(out.stdout)
