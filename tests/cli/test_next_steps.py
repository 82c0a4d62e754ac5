"""The "what just happened / what next" lines that ``aimass run`` prints after a pipeline that deployed a model."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from tests.cli._render import render
from tests.cli.test_tables import LONG_URL, quickstart_state


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path))
    monkeypatch.delenv("AIMASS_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("AIMASS_SERVE_TOKEN_FILE", raising=False)
    return tmp_path


def test_it_says_what_happened_and_what_to_type_next(repo_root, home):
    from aimass.cli.progress import next_steps

    st = quickstart_state(repo_root)
    lines = next_steps(st, str(repo_root / "pipelines" / "quickstart.yaml"))
    text = "\n".join(lines)
    assert "run 20261203-172000-abc123: 5 steps in 95s (data → train → evaluate → register → deploy)" in text
    assert "#/experiments/1/runs/" + "f" * 32 in text                         # the MLflow link
    assert "registered digits version 3, aliases: challenger, champion (gate passed)" in text
    assert f"serving digits version 3 at {LONG_URL}" in text
    request = repo_root / "pipelines" / "examples" / "digits-request.json"
    assert f"aimass predict digits --input @{request}" in text
    curl = next(ln.strip() for ln in lines if ln.strip().startswith("curl "))
    argv = shlex.split(curl)  # copy-pasteable: it parses as one shell command
    assert argv[-1] == LONG_URL and f"@{request}" in argv
    assert f"Authorization: Bearer $(cat {home / 'serve-token'})" in argv
    assert any(ln.strip().startswith("aimass down") for ln in lines)
    tuned = next(ln for ln in lines if str(repo_root / "pipelines" / "quickstart-tuned.yaml") in ln)  # the next examples
    assert tuned.strip().startswith("aimass run ") and "# Digits classifier, tuned with Ray Tune" in tuned
    assert "README.md#examples" in text


def test_aliases_come_from_the_register_step_config_and_the_gate(repo_root, home):
    from aimass.cli.progress import next_steps

    st = quickstart_state(repo_root)
    st.spec["spec"]["steps"][3]["config"].update({"challengerAlias": "candidate", "championAlias": "prod"})
    st.steps["register"].outputs["model_version"]["champion"] = False
    text = "\n".join(next_steps(st, None))
    assert "aliases: candidate (gate not passed: champion unchanged)" in text
    assert "--input @rows.json" in text  # no example request next to an unknown pipeline file


def test_nothing_deployed_nothing_printed(repo_root, home):
    from aimass.cli.progress import next_steps

    st = quickstart_state(repo_root)
    del st.steps["deploy"]
    assert next_steps(st, None) is None
    st = quickstart_state(repo_root)
    st.steps["deploy"].status = "FAILED"
    assert next_steps(st, None) is None


def test_aimass_run_prints_the_summary_then_the_next_steps_at_80_columns(repo_root, home, monkeypatch):
    """`aimass run` in text mode, the orchestrator replaced by the state a finished quickstart leaves."""
    import aimass.orchestrator as orch
    from aimass.cli.main import app as cli

    state = quickstart_state(repo_root)
    monkeypatch.setattr(orch, "run_pipeline", lambda spec, settings, **kw: state)
    monkeypatch.setenv("COLUMNS", "80")
    res = CliRunner().invoke(cli, ["run", str(repo_root / "pipelines" / "quickstart.yaml")])
    assert res.exit_code == 0, res.output
    out = res.output
    assert out.index("run 20261203-172000-abc123 · quickstart") < out.index("What just happened") < out.index("What next")
    assert "…" not in out
    curl = [ln for ln in out.splitlines() if ln.strip().startswith("curl ")]
    assert len(curl) == 1 and curl[0].rstrip().endswith(LONG_URL)  # one line however narrow the terminal


def test_the_lines_render_without_markup_surprises(repo_root, home):
    """Brackets in a request body or a path are shown as typed, not taken for rich markup."""
    from aimass.cli.progress import next_steps

    st = quickstart_state(repo_root)
    lines = next_steps(st, None)
    text = "".join(render(ln, 1000) for ln in lines)
    assert '"shape": [1, N]' in text and '"data": [...]' in text
