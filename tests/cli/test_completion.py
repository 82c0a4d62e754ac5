"""Shell completion: typer's ``--install-completion`` / ``--show-completion`` for bash, zsh and fish, and the
completion protocol itself answering with aimass's commands."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import aimass_bin, cli_env


def aimass(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([aimass_bin(), *args], env=cli_env(**env), capture_output=True, text=True, timeout=60)


def test_show_completion_bash_prints_a_script():
    # typer otherwise detects the shell from the parent process, which under `make` is /bin/sh ("Shell sh not
    # supported"): a user types this in the shell they want the script for
    out = aimass("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert out.returncode == 0, out.stderr
    assert "_AIMASS_COMPLETE=complete_bash" in out.stdout and "complete -o default -F _aimass_completion aimass" in out.stdout


@pytest.mark.parametrize("shell, marker", [("bash", "complete_bash"), ("zsh", "compdef _aimass_completion aimass"),
                                           ("fish", "complete --command aimass")])
def test_each_shell_gets_its_script(shell, marker):
    # typer detects the shell from the parent process; naming it explicitly is what `--show-completion SHELL` does
    out = aimass("--show-completion", shell, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout


def test_completion_answers_with_commands_and_subcommands():
    out = aimass(COMP_WORDS="aimass pi", COMP_CWORD="1", _AIMASS_COMPLETE="complete_bash")
    assert out.stdout.split() == ["pipeline"]
    out = aimass(COMP_WORDS="aimass pipeline va", COMP_CWORD="2", _AIMASS_COMPLETE="complete_bash")
    assert out.stdout.split() == ["validate"]
    out = aimass(COMP_WORDS="aimass doc", COMP_CWORD="1", _AIMASS_COMPLETE="complete_bash")
    assert out.stdout.split() == ["doctor"]


def test_help_lists_the_completion_options():
    out = aimass("--help", COLUMNS="100")
    assert "--install-completion" in out.stdout and "--show-completion" in out.stdout
