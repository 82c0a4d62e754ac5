"""Live progress for ``aimass run`` (rich) and the end-of-run summary table."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from aimass.orchestrator.runner import RunObserver
from aimass.orchestrator.state import FAILED, PENDING, RUNNING, SKIPPED, SUCCEEDED, RunState

__all__ = ["LiveProgress", "summary_table", "headline_metrics", "mlflow_ui_hint"]

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
    t = Table(title=f"run {state.run_id} · {state.pipeline} · [{_STYLE.get(state.status, '')}]{state.status}[/]",
              title_justify="left", show_lines=False)
    for col in ("step", "type", "status", "cached", "attempts", "duration", "result"):
        t.add_column(col, overflow="fold")
    for st in state.steps.values():
        result = headline_metrics(st.outputs) if st.status == SUCCEEDED else (st.error or {}).get("message", "")
        t.add_row(st.name, st.type, f"[{_STYLE.get(st.status, '')}]{st.status}[/]", "yes" if st.cached else "",
                  str(st.attempts), _fmt_s(st.duration_s), result)
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
