"""Live progress for ``aimass run`` (rich) and the end-of-run summary table."""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from aimass.orchestrator.runner import RunObserver
from aimass.orchestrator.state import FAILED, PENDING, RUNNING, SKIPPED, SUCCEEDED, RunState

__all__ = ["LiveProgress", "headline_metrics", "mlflow_ui_hint", "next_steps", "summary_table"]

_STYLE = {SUCCEEDED: "green", FAILED: "red", RUNNING: "yellow", PENDING: "dim", SKIPPED: "dim"}


def headline_metrics(outputs: dict[str, Any]) -> str:
    parts = []
    for block in ("metrics", "train_metrics"):
        m = outputs.get(block) or {}
        for k in ("accuracy", "f1_macro", "roc_auc_ovr", "final_val_accuracy", "epochs_run"):
            if k in m and isinstance(m[k], (int, float)):
                parts.append(f"{k}={m[k]:.4g}")
    mv = outputs.get("model_version")
    if isinstance(mv, dict):
        parts.append(f"{mv.get('name')} v{mv.get('version')}{' champion' if mv.get('champion') else ''}")
    ep = outputs.get("endpoint")
    if isinstance(ep, dict) and ep.get("url"):
        parts.append(str(ep["url"]))
    return ", ".join(parts)


def _fmt_s(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}s"


def summary_table(state: RunState) -> Table:
    """One row per step: status, cache hit, attempts, duration and its headline result; readable at 80 columns.

    The ``type`` column is shown only when some step is named differently from its type (it would repeat
    the name otherwise, taking width from the results).
    """
    from aimass.cli.common import table

    show_type = any(st.name != st.type for st in state.steps.values())
    short = {"no_wrap": True}  # short cells stay whole; the result column folds
    cols: list = ["step", *(["type"] if show_type else []), ("status", short), ("cached", short),
                  ("tries", {"justify": "right", **short}), ("time", {"justify": "right", **short}), "result"]
    t = table(*cols, title=f"run {state.run_id} · {state.pipeline} · [{_STYLE.get(state.status, '')}]{state.status}[/]")
    for st in state.steps.values():
        result = headline_metrics(st.outputs) if st.status == SUCCEEDED else (st.error or {}).get("message", "")
        t.add_row(st.name, *([st.type] if show_type else []), f"[{_STYLE.get(st.status, '')}]{st.status}[/]",
                  "yes" if st.cached else "", str(st.attempts), _fmt_s(st.duration_s), escape(result or ""))
    return t


def mlflow_ui_hint(state: RunState) -> str:
    uri = state.tracking_uri or ""
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {uri}/#/experiments/{state.experiment_id}/runs/{state.mlflow_run_id}"
    return (f"MLflow UI: aimass ui   (or: mlflow ui --backend-store-uri {uri}) then open "
            f"http://127.0.0.1:5000/#/experiments/{state.experiment_id}/runs/{state.mlflow_run_id}")


class LiveProgress(RunObserver):
    """A live table of steps with spinners and elapsed times."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.state: RunState | None = None
        self.live = Live(console=console, refresh_per_second=8, transient=False)
        self.notes: list[str] = []

    def _render(self):
        st = self.state
        if st is None:
            return Text("starting...")
        t = Table.grid(padding=(0, 2))
        now = time.time()
        for s in st.steps.values():
            icon: Any
            if s.status == RUNNING:
                icon = Spinner("dots", style="yellow")
            else:
                icon = Text({SUCCEEDED: "✔", FAILED: "✘", SKIPPED: "-", PENDING: "·"}.get(s.status, "?"), style=_STYLE.get(s.status, ""))
            elapsed = s.duration_s if s.status != RUNNING else (now - (s.started_at or now))
            extra = " (cached)" if s.cached else (f" attempt {s.attempts}" if s.attempts > 1 else "")
            t.add_row(icon, Text(s.name, style="bold"), Text(s.type, style="dim"), Text(_fmt_s(elapsed)), Text(extra, style="cyan"))
        return Group(Text(f"aimass run {st.run_id} · {st.pipeline}", style="bold"), t, *[Text(n, style="yellow") for n in self.notes[-3:]])

    def _refresh(self) -> None:
        self.live.update(self._render(), refresh=True)

    def run_started(self, state, resumed):
        self.state = state
        if resumed:
            self.notes.append(f"resuming: {sum(s.status == SUCCEEDED for s in state.steps.values())} step(s) already done")
        self.live.start()
        self.live.update(self._render())
        self.live.get_renderable = self._render  # keeps spinners and timers moving between events

    def step_started(self, state, step):
        self._refresh()

    def step_finished(self, state, step):
        self._refresh()

    def step_retrying(self, state, step, error, delay_s):
        self.notes.append(f"{step.name}: retrying in {delay_s:.1f}s after: {str(error)[:200]}")
        self._refresh()

    def run_finished(self, state):
        self._refresh()
        self.live.stop()

    def stop(self) -> None:
        if self.live.is_started:
            self.live.stop()


def _aliases(state: RunState, step_name: str, champion: bool) -> list[str]:
    """The aliases the register step set on its new version (from the run's own spec)."""
    challenger, champ = "challenger", "champion"
    try:
        from aimass.spec import parse_pipeline

        spec = parse_pipeline(state.spec, source=f"run {state.run_id}")
        cfg = next(s for s in spec.steps if s.name == step_name).parsed_config
        challenger, champ = cfg.challenger_alias, cfg.champion_alias
    except Exception:  # noqa: BLE001 - an old or foreign spec: the default aliases
        pass
    return [challenger, champ] if champion else [challenger]


def _shell_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def next_steps(state: RunState, pipeline_file: str | None = None, settings: Any = None) -> list[str] | None:
    """The "what just happened / what next" lines printed after a run that deployed a model.

    Returns None when the run served nothing (no succeeded deploy step). Each command is one line, so
    it stays copy-pasteable however narrow the terminal is.
    """
    from pathlib import Path

    deploy = next((s for s in state.steps.values() if s.type == "deploy" and s.status == SUCCEEDED
                   and isinstance(s.outputs.get("endpoint"), dict)), None)
    if deploy is None:
        return None
    if settings is None:
        from aimass.settings import Settings

        settings = Settings.load()
    ep = deploy.outputs["endpoint"]
    model, url = ep.get("model") or "MODEL", (ep.get("url") or "").rstrip("/")
    infer_url = ep.get("infer_url") or f"{url}/v2/models/{model}/infer"
    lines = ["[bold]What just happened[/]"]
    steps = list(state.steps.values())
    took = f" in {state.duration_s:.0f}s" if state.duration_s else ""
    lines.append(f"  run {state.run_id}: {len(steps)} steps{took} ({' → '.join(s.name for s in steps)})")
    lines.append("  " + mlflow_ui_hint(state))
    reg = next((s for s in steps if s.type == "register" and isinstance(s.outputs.get("model_version"), dict)), None)
    if reg is not None:
        mv = reg.outputs["model_version"]
        aliases = _aliases(state, reg.name, bool(mv.get("champion")))
        gate = "gate passed" if mv.get("champion") else "gate not passed: champion unchanged"
        lines.append(f"  registered {mv.get('name')} version {mv.get('version')}, aliases: {', '.join(aliases)} ({gate})")
    lines.append(f"  serving {model} version {ep.get('version')} at {infer_url} (application {ep.get('app')})")

    request = None
    if pipeline_file:
        cand = Path(pipeline_file).parent / "examples" / f"{ep.get('registered') or model}-request.json"
        if cand.is_file():
            request = str(cand)
    body = f"@{request}" if request else "@rows.json"
    lines.append("")
    lines.append("[bold]What next[/]")
    lines.append(f"  aimass predict {model} --input {body}")
    if os.environ.get("AIMASS_SERVE_TOKEN"):
        token = "$AIMASS_SERVE_TOKEN"
    else:
        token = f"$(cat {_shell_quote(str(Path(settings.serve_token_file or Path(settings.home) / 'serve-token')))})"
    data = f"-d {_shell_quote(body)}" if request else """-d '{"inputs": [{"name": "input", "shape": [1, N], "datatype": "FP32", "data": [...]}]}'"""
    lines.append(f"  curl -s -H \"Authorization: Bearer {token}\" -H 'Content-Type: application/json' {data} {infer_url}")
    lines.append("  aimass serving status           # what is served, replicas, rollout events")
    lines.append("  aimass down                     # stop the local cluster and every model it serves")
    examples = _examples(pipeline_file)
    if examples:
        lines.append("  more pipelines:")
        width = max(len(e) for e, _ in examples)
        lines += [f"    aimass run {e:<{width}}" + (f"   # {d}" if d else "") for e, d in examples]
    lines.append("  the examples table: README.md#examples · the reference: docs/cli.md")
    from rich.markup import escape

    return [ln if ln.startswith("[bold]") else escape(ln) for ln in lines]


def _examples(pipeline_file: str | None) -> list[tuple[str, str]]:
    """(path, description) of the other example pipelines next to the one that ran (image, text, compress...)."""
    from pathlib import Path

    import yaml

    if not pipeline_file:
        return []
    here = Path(pipeline_file)
    out = []
    for p in sorted(here.parent.glob("*.yaml")):
        if p.name == here.name:
            continue
        try:
            doc = yaml.safe_load(p.read_text()) or {}
            desc = str((doc.get("metadata") or {}).get("description") or "")
        except Exception:  # noqa: BLE001 - an unreadable example is still worth naming
            desc = ""
        out.append((str(p), desc))
    return out[:8]
