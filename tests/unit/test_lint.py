"""The tree stays clean under `ruff check` with the rules configured in pyproject.toml (what `make lint` runs)."""

from __future__ import annotations

import subprocess
import sys


def test_ruff_check_is_clean(repo_root):
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ruff check found problems (fix them, or see [tool.ruff] in pyproject.toml):\n{proc.stdout}{proc.stderr}"
