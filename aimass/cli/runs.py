"""``aimass runs list|show|logs|cancel``: local runs and runs submitted to k8s, Ray or the control plane."""

from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from aimass.cli.common import OUTPUT_OPTION, Output, console, emit_json, err_console, fail, table
from aimass.exceptions import AimassError, InvalidRequestError, NotFoundError

__all__ = ["register"]

runs_app = typer.Typer(help="Runs: local ones and those submitted to a cluster.", no_args_is_help=True)

_COLORS = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan", "PENDING": "white"}


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _fmt_duration(start: float | None, end: float | None) -> str:
    if not start:
        return ""
    d = (end or time.time()) - start
    return f"{d:.0f}s" if d < 120 else f"{d / 60:.1f}m" if d < 7200 else f"{d / 3600:.1f}h"


def _state(s: str) -> str:
    return f"[{_COLORS.get(s, 'white')}]{s}[/]"


def _local_runs(limit: int) -> list[Any]:
    from aimass.orchestrator.state import list_runs
    from aimass.settings import Settings

    try:
        return list_runs(Settings.load(), limit=limit)
    except AimassError as exc:
        err_console.print(f"[yellow]warning:[/] cannot read local runs: {exc}")
        return []


def _load_local(run_id: str) -> Any | None:
    from aimass.orchestrator.state import load_run
    from aimass.settings import Settings

    try:
        return load_run(Settings.load(), run_id)
    except (NotFoundError, FileNotFoundError, KeyError):
        return None


def _where(ref: Any) -> str:
    if ref.backend == "k8s":
        return f"k8s:{ref.namespace}"
    return f"{ref.backend}:{ref.address}"


def _refresh(ref: Any) -> Any:
    """The ref with its current status (the last known one, marked, when the backend is unreachable)."""
    from aimass.orchestrator.executors.base import RunStatus, executor_for

    try:
        ref.status = executor_for(ref).status(ref)
    except AimassError as exc:
        last = ref.status.state if ref.status else "UNKNOWN"
        ref.status = RunStatus(state=last, message=f"unreachable: {exc.message}", details={"stale": True})
    return ref


def _local_row(r: Any) -> dict[str, Any]:
    return {"run_id": r.run_id, "pipeline": r.pipeline, "where": "local", "state": r.status, "started_at": r.started_at,
            "finished_at": r.finished_at, "message": (r.error or {}).get("message")}


def _ref_row(ref: Any) -> dict[str, Any]:
    st = ref.status
    return {"run_id": ref.run_id, "pipeline": ref.pipeline, "where": _where(ref), "state": st.state if st else "UNKNOWN",
            "started_at": (st.started_at if st and st.started_at else ref.submitted_at),
            "finished_at": st.finished_at if st else None, "message": st.message if st else None, "owner": ref.owner}


# The backend options of every `runs` command: ask a backend itself instead of this machine's records.
BACKEND = typer.Option(None, "--backend", help="Ask a backend itself: k8s, ray or api (default: local runs and your submissions).")
NAMESPACE = typer.Option(None, "--namespace", "-n", help="--backend k8s: the namespace.")
CONTEXT = typer.Option(None, "--context", help="--backend k8s: kubeconfig context.")
ADDRESS = typer.Option(None, "--address", help="--backend ray: the dashboard URL.")
API_URL = typer.Option(None, "--api-url", envvar="AIMASS_API_URL", help="--backend api: the control plane's URL.")
TOKEN_FILE = typer.Option(None, "--token-file", help="--backend api/ray: token file.")


def _backend(backend: str, namespace: str | None, context: str | None, address: str | None, api_url: str | None,
             token_file: str | None) -> Any:
    from aimass.cli.submit import build_executor

    return build_executor(backend, namespace=namespace, context=context, address=address, api_url=api_url,
                          token_file=token_file)


@runs_app.command("list")
def list_cmd(
    backend: Optional[str] = BACKEND,
    namespace: Optional[str] = NAMESPACE,
    context: Optional[str] = CONTEXT,
    address: Optional[str] = ADDRESS,
    api_url: Optional[str] = API_URL,
    token_file: Optional[str] = TOKEN_FILE,
    refresh: bool = typer.Option(True, "--refresh/--no-refresh", help="Ask the backends for the current status of submitted runs."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="At most this many runs of each kind."),
    output: Output = OUTPUT_OPTION,
) -> None:
    """List runs, newest first.

    Examples:

      aimass runs list

      aimass runs list --backend k8s -n ml -o json
    """
    try:
        if backend:
            ex = _backend(backend, namespace, context, address, api_url, token_file)
            rows = [_ref_row(r) for r in ex.list()[:limit]]
        else:
            from aimass.orchestrator.executors.base import SubmissionStore

            refs = SubmissionStore().list()[:limit]
            if refs and refresh:
                refs = [_refresh(r) if not (r.status and r.status.terminal) else r for r in refs]
                store = SubmissionStore()
                for r in refs:
                    if not (r.status and r.status.details.get("stale")):
                        store.update(r)
            rows = [_ref_row(r) for r in refs] + [_local_row(r) for r in _local_runs(limit)]
            rows.sort(key=lambda r: r.get("started_at") or 0, reverse=True)
    except AimassError as exc:
        fail(exc, output)
        return
    if output == Output.json:
        emit_json(rows)
        return
    if not rows:
        console.print("no runs yet: `aimass run FILE` runs one here, `aimass submit FILE --to k8s` on a cluster")
        return
    console.print(runs_table(rows))


def runs_table(rows: list[dict[str, Any]]) -> Table:
    """Runs, one per row, laid out for 80 columns: the id (whole, to copy) over its pipeline and where it runs,
    the state over its duration, the start time, and the last message, which folds."""
    t = table(("run", {"no_wrap": True}), ("state", {"no_wrap": True}), ("started", {"no_wrap": True}), "message")
    for r in rows:
        msg = r.get("message") or ""
        started = time.strftime("%m-%d %H:%M", time.localtime(r["started_at"])) if r.get("started_at") else ""
        t.add_row(f"{r['run_id']}\n[dim]{escape(str(r['pipeline']))} · {escape(str(r['where']))}[/]",
                  f"{_state(r['state'])}\n[dim]{_fmt_duration(r['started_at'], r['finished_at'])}[/]", started,
                  escape(msg if len(msg) <= 200 else msg[:197] + "..."))
    return t


def _find_ref(run_id: str, backend: tuple) -> tuple[Any, Any] | tuple[None, None]:
    """(ref, executor) of a submitted run: from the backend itself with ``--backend``, else from the
    submissions made on this machine; (None, None) when it is not a submitted run we know."""
    from aimass.orchestrator.executors.base import SubmissionStore, executor_for

    if backend[0]:
        ex = _backend(*backend)
        return ex.get(run_id), ex  # NotFoundError from the backend names what it looked at
    ref = SubmissionStore().find(run_id)
    return (ref, executor_for(ref)) if ref is not None else (None, None)


def _remember(ref: Any) -> None:
    """Update this machine's record of a submission (runs found through --backend may not be in it)."""
    from aimass.orchestrator.executors.base import SubmissionStore

    store = SubmissionStore()
    if store.find(ref.run_id) is not None:
        store.update(ref)


@runs_app.command("show")
def show(run_id: str = typer.Argument(..., help="Run id (see `aimass runs list`)."),
         backend: Optional[str] = BACKEND, namespace: Optional[str] = NAMESPACE, context: Optional[str] = CONTEXT,
         address: Optional[str] = ADDRESS, api_url: Optional[str] = API_URL, token_file: Optional[str] = TOKEN_FILE,
         output: Output = OUTPUT_OPTION) -> None:
    """Show one run: its status and, for local runs, each step.

    Examples:

      aimass runs show 20250101-120000-abc123

      aimass runs show 20250101-120000-abc123 --backend k8s -n ml
    """
    try:
        ref, ex = _find_ref(run_id, (backend, namespace, context, address, api_url, token_file))
        if ref is not None:
            ref.status = ex.status(ref)
            _remember(ref)
            if output == Output.json:
                emit_json(ref.to_dict())
                return
            st = ref.status
            console.print(f"run [bold]{ref.run_id}[/]  pipeline [bold]{ref.pipeline}[/]  on {_where(ref)}")
            console.print(f"  state:     {_state(st.state)}" + (f"  ({st.message})" if st.message else ""))
            console.print(f"  submitted: {_fmt_time(ref.submitted_at)}")
            if st.started_at:
                console.print(f"  started:   {_fmt_time(st.started_at)}   duration {_fmt_duration(st.started_at, st.finished_at)}")
            for k, v in st.details.items():
                if v is not None:
                    console.print(f"  {k}: {v}")
            return
        run = _load_local(run_id)
        if run is None:
            raise NotFoundError(f"no run {run_id!r} (neither local nor submitted from here)",
                                fix="See `aimass runs list`; runs submitted elsewhere: `aimass runs list --backend k8s`.")
    except AimassError as exc:
        fail(exc, output)
        return
    _show_local(run, output)


def _show_local(run: Any, output: Output) -> None:
    if output == Output.json:
        emit_json(run.to_dict())
        return
    console.print(f"run [bold]{run.run_id}[/]  pipeline [bold]{run.pipeline}[/]  local  {_state(run.status)}")
    console.print(f"  started: {_fmt_time(run.started_at)}   duration {_fmt_duration(run.started_at, run.finished_at)}"
                  + (f"   MLflow run {run.mlflow_run_id}" if run.mlflow_run_id else ""))
    console.print(local_run_table(run))


def local_run_table(run: Any) -> Table:
    """The steps of a local run: state, cache hit, duration, and the headline outputs (which fold) over the
    step's MLflow run id (whole, to copy)."""
    from aimass.cli.progress import headline_metrics

    short = {"no_wrap": True}
    t = table("step", ("state", short), ("cached", short), ("time", {"justify": "right", **short}), "outputs · MLflow run")
    for name, s in run.steps.items():
        outs = headline_metrics(s.outputs) or ", ".join(f"{k}={v}" for k, v in s.outputs.items())
        outs = outs if len(outs) <= 300 else outs[:297] + "..."
        t.add_row(name, _state(s.status), "yes" if s.cached else "", f"{s.duration_s:.1f}s" if s.duration_s else "",
                  escape(outs) + (f"\n[dim]{s.mlflow_run_id}[/]" if s.mlflow_run_id else ""))
    return t


@runs_app.command("logs")
def logs(run_id: str = typer.Argument(..., help="Run id."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the run ends."),
         tail: Optional[int] = typer.Option(None, "--tail", min=1, help="Only the last N lines."),
         backend: Optional[str] = BACKEND, namespace: Optional[str] = NAMESPACE, context: Optional[str] = CONTEXT,
         address: Optional[str] = ADDRESS, api_url: Optional[str] = API_URL, token_file: Optional[str] = TOKEN_FILE) -> None:
    """Print the driver's log of a submitted run.

    Examples:

      aimass runs logs 20250101-120000-abc123 --follow

      aimass runs logs 20250101-120000-abc123 --backend ray --address http://127.0.0.1:8265
    """
    try:
        ref, ex = _find_ref(run_id, (backend, namespace, context, address, api_url, token_file))
        if ref is None:
            if _load_local(run_id) is not None:
                raise InvalidRequestError(f"run {run_id!r} ran locally: its output went to the terminal that ran it",
                                          fix=f"See `aimass runs show {run_id}` for each step's status and errors.")
            raise NotFoundError(f"no submitted run {run_id!r}", fix="See `aimass runs list`; a run submitted "
                                "elsewhere: add --backend k8s|ray|api.")
        for line in ex.logs(ref, follow=follow, tail_lines=tail):
            typer.echo(line)
    except AimassError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@runs_app.command("cancel")
def cancel(run_id: str = typer.Argument(..., help="Run id."),
           delete: bool = typer.Option(False, "--delete", help="k8s: delete the RayJob too (default: suspend it, keeping the record)."),
           backend: Optional[str] = BACKEND, namespace: Optional[str] = NAMESPACE, context: Optional[str] = CONTEXT,
           address: Optional[str] = ADDRESS, api_url: Optional[str] = API_URL, token_file: Optional[str] = TOKEN_FILE,
           output: Output = OUTPUT_OPTION) -> None:
    """Stop a submitted run (k8s: the RayJob is suspended and its cluster deleted).

    Examples:

      aimass runs cancel 20250101-120000-abc123

      aimass runs cancel 20250101-120000-abc123 --backend k8s -n ml --delete
    """
    try:
        ref, ex = _find_ref(run_id, (backend, namespace, context, address, api_url, token_file))
        if ref is None:
            if _load_local(run_id) is not None:
                raise InvalidRequestError(f"run {run_id!r} runs locally", fix="Stop it with Ctrl-C in its terminal; "
                                          f"`aimass run --resume {run_id}` continues it later.")
            raise NotFoundError(f"no submitted run {run_id!r}", fix="See `aimass runs list`; a run submitted "
                                "elsewhere: add --backend k8s|ray|api.")
        ref.status = ex.cancel(ref, delete=True) if delete and ref.backend == "k8s" else ex.cancel(ref)
        _remember(ref)
    except AimassError as exc:
        fail(exc, output)
        return
    if output == Output.json:
        emit_json(ref.to_dict())
    else:
        console.print(f"run {ref.run_id}: {_state(ref.status.state)}" + (f" ({ref.status.message})" if ref.status.message else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
