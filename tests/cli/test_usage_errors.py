"""Usage errors through the real entry point (``aimass`` → ``run_app``): the usage line and exit 2, never a
traceback. typer >= 0.24 raises its own vendored click's exceptions, which ``run_app`` once let through."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import aimass_bin, cli_env


@pytest.mark.parametrize("args, message", [
    (["run"], "give a pipeline FILE (or --resume RUN_ID)"),
    (["predict", "digits"], "Missing option '--input'"),
    (["doctor", "--check", "nope"], "unknown check(s) nope; the checks are: python, packages"),
    (["predict", "digits", "--input", "[[1]]", "--top-k", "0"], "--top-k"),
])
def test_usage_errors_print_usage_not_a_traceback(args, message):
    out = subprocess.run([aimass_bin(), *args], env=cli_env(COLUMNS="200"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and message in out.stderr, out.stderr
    assert f"Usage: aimass {args[0]}" in out.stderr
