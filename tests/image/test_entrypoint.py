"""The image entrypoint's role table and refusals (pure Python, no image needed)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "aimass_image_entrypoint", Path(__file__).resolve().parents[2] / "docker" / "image" / "entrypoint.py")
entrypoint = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(entrypoint)


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ["aimass", "--help"]),
    (["--help"], ["aimass", "--help"]),
    (["pipeline", "validate", "p.yaml"], ["aimass", "pipeline", "validate", "p.yaml"]),
    (["ray-head", "--port", "6379"], ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0",
                                      "--disable-usage-stats", "--port", "6379"]),
    (["ray-worker", "head:6379"], ["ray", "start", "--block", "--disable-usage-stats", "--address", "head:6379"]),
    (["control-plane"], ["aimass", "api", "serve", "--host", "0.0.0.0", "--port", "8080"]),
    (["mlflow-server", "--app-name", "basic-auth"], ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000",
                                                     "--app-name", "basic-auth"]),
    (["submit", "--", "aimass", "run"], ["ray", "job", "submit", "--", "aimass", "run"]),
    (["mlflow", "server"], ["mlflow", "server"]),
    (["/bin/bash", "-lc", "ray start"], ["/bin/bash", "-lc", "ray start"]),
])
def test_roles(argv, expected):
    assert entrypoint.command_for(argv) == expected


def test_root_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.delenv("AIMASS_ALLOW_ROOT", raising=False)
    monkeypatch.setattr(os, "execvp", lambda *a: pytest.fail("must not exec as root"))
    assert entrypoint.main(["--help"]) == 77
    err = capsys.readouterr().err
    assert "refusing to run as root" in err and "runAsUser: 1000" in err


def test_unwritable_tmp_is_refused(monkeypatch, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("TMPDIR", str(ro))
    monkeypatch.setattr(os, "access", lambda p, m: False)
    monkeypatch.setattr(os, "execvp", lambda *a: pytest.fail("must not exec"))
    assert entrypoint.main(["--help"]) == 73
    assert "is not writable" in capsys.readouterr().err


def test_worker_without_address(monkeypatch, capsys):
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("TMPDIR", "/tmp")
    monkeypatch.setattr(os, "execvp", lambda *a: pytest.fail("must not exec"))
    assert entrypoint.main(["ray-worker"]) == 64
    assert "needs the head's address" in capsys.readouterr().err
