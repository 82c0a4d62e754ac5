"""``aimass submit FILE --to k8s|ray|api``: run a pipeline on a cluster instead of here."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from aimass.cli.common import OUTPUT_OPTION, Output, console, emit_json, err_console, fail
from aimass.exceptions import AimassError, InvalidRequestError

__all__ = ["register", "build_executor", "parse_labels", "watch_run"]


class Backend(str, Enum):
    k8s = "k8s"
    ray = "ray"
    api = "api"


class Entrypoint(str, Enum):
    run = "run"
    validate = "validate"


def parse_labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequestError("labels are key=value", got=item, fix="e.g. --label team=vision")
        out[key.strip()] = value.strip()
    return out


def build_executor(to: str, *, namespace: str | None = None, context: str | None = None, image: str | None = None,
                   service_account: str | None = None, cluster: str | None = None, address: str | None = None,
                   api_url: str | None = None, token_file: str | None = None, action: str = "run") -> Any:
    """The executor for ``--to`` with the CLI's options."""
    if to == "k8s":
        from aimass.orchestrator.executors.kubernetes import KubernetesExecutor

        return KubernetesExecutor.from_env(namespace=namespace, context=context, image=image,
                                           service_account=service_account, cluster=cluster, action=action)
    if to == "ray":
        from aimass.orchestrator.executors.ray_jobs import RayJobsExecutor

        return RayJobsExecutor(address, token_file=token_file, action=action)
    if to == "api":
        from aimass.api.client import ControlPlaneExecutor

        if action != "run":
            raise InvalidRequestError("the control plane only runs pipelines", got=action, fix="Drop --entrypoint.")

        return ControlPlaneExecutor(api_url, token_file=token_file)
    raise InvalidRequestError(f"unknown backend {to!r}", fix="Use --to k8s, ray or api.")


def watch_run(executor: Any, ref: Any, *, output: Output, timeout_s: float | None = None) -> Any:
    """Stream the run's log until it ends, then return its final status."""
    import time

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        for line in executor.logs(ref, follow=True):
            if output == Output.text:
                typer.echo(line)
            if deadline is not None and time.monotonic() > deadline:
                break
        status = executor.status(ref)
        while not status.terminal and (deadline is None or time.monotonic() < deadline):
            time.sleep(2.0)
            status = executor.status(ref)
    except KeyboardInterrupt:
        err_console.print(f"stopped watching; the run goes on. Stop it with `aimass runs cancel {ref.run_id}`.")
        raise typer.Exit(130) from None
    return status


def submit(
    file: Path = typer.Argument(..., help="Pipeline YAML file."),
    to: Backend = typer.Option(Backend.k8s, "--to", help="k8s: a KubeRay RayJob; ray: an existing cluster's Jobs API; api: the AI Mass control plane."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="k8s: namespace (default AIMASS_K8S_NAMESPACE or the kubeconfig's)."),
    context: Optional[str] = typer.Option(None, "--context", help="k8s: kubeconfig context."),
    image: Optional[str] = typer.Option(None, "--image", help="k8s: image with aimass and Ray (default AIMASS_RAY_IMAGE)."),
    service_account: Optional[str] = typer.Option(None, "--service-account", help="k8s: ServiceAccount of the Ray pods."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="k8s: run on this existing RayCluster instead of a new one."),
    address: Optional[str] = typer.Option(None, "--address", help="ray: the dashboard URL, e.g. http://ray-head:8265."),
    api_url: Optional[str] = typer.Option(None, "--api-url", envvar="AIMASS_API_URL", help="api: the control plane's URL."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="api: the bearer token file; ray: the Ray auth token file."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id (lowercase letters, digits, '-'; at most 40); generated when unset."),
    label: list[str] = typer.Option([], "--label", "-l", help="key=value label, repeatable."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Stream the log and wait for the end; exit 1 unless it succeeded."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="With --watch: stop waiting after this many seconds."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be submitted (k8s: the ConfigMap and RayJob) and stop."),
    entrypoint: Entrypoint = typer.Option(Entrypoint.run, "--entrypoint", help="run: run the pipeline; validate: only validate "
                                          "it on the cluster (a smoke test of the image, the token and the access)."),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Submit a pipeline to run on a cluster. The same spec runs the same way as `aimass run`.

    Examples:

      aimass submit pipelines/quickstart.yaml --to k8s -n ml --image ghcr.io/acme/aimass:0.1.0 --watch

      aimass submit pipelines/quickstart.yaml --to ray --address http://127.0.0.1:8265

      aimass submit pipelines/quickstart.yaml --to api --api-url https://aimass.example.com --token-file ~/.aimass/token

      aimass submit pipelines/quickstart.yaml --to k8s --dry-run > run.yaml
    """
    from aimass.orchestrator.executors.base import SubmissionStore, check_run_id, new_run_id
    from aimass.spec import load_pipeline

    try:
        spec = load_pipeline(file)
    except AimassError as exc:
        fail(exc, output, code=2)
        return
    try:
        rid = check_run_id(run_id) if run_id else new_run_id()
        labels = parse_labels(label)
        ex = build_executor(to.value, namespace=namespace, context=context, image=image, service_account=service_account,
                            cluster=cluster, address=address, api_url=api_url, token_file=str(token_file) if token_file else None,
                            action=entrypoint.value)
        if dry_run:
            _dry_run(to.value, ex, spec, rid, labels, output)
            return
        ref = ex.submit(spec, rid, labels=labels)
        if to == Backend.k8s and context:
            ref.options["context"] = context
    except AimassError as exc:
        fail(exc, output)
        return
    try:
        SubmissionStore().add(ref)
    except AimassError as exc:  # the run is submitted; only `aimass runs` will not know it
        err_console.print(f"[yellow]warning:[/] could not record the submission locally: {exc}")
    where = {"k8s": f"Kubernetes namespace {ref.namespace} (RayJob {ref.name})", "ray": f"the Ray cluster at {ref.address}",
             "api": f"the control plane at {ref.address}"}[to.value]
    if output == Output.text:
        console.print(f"[green]✔[/] submitted run [bold]{ref.run_id}[/] of pipeline [bold]{spec.name}[/] to {where}")
    if not watch:
        if output == Output.json:
            emit_json(ref.to_dict())
        else:
            console.print(f"  follow it:  aimass runs logs {ref.run_id} --follow\n  status:     aimass runs show {ref.run_id}\n"
                          f"  stop it:    aimass runs cancel {ref.run_id}")
        return
    try:
        status = watch_run(ex, ref, output=output, timeout_s=timeout)
    except AimassError as exc:
        fail(exc, output)
        return
    ref.status = status
    try:
        SubmissionStore().update(ref)
    except AimassError:
        pass
    if output == Output.json:
        emit_json(ref.to_dict())
    else:
        color = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow"}.get(status.state, "white")
        console.print(f"run {ref.run_id}: [{color}]{status.state}[/]" + (f" ({status.message})" if status.message else ""))
    if status.state != "SUCCEEDED":
        raise typer.Exit(1)


def _yaml(docs: list[Any]) -> str:
    """YAML for people: multi-line strings (the pipeline in the ConfigMap) as literal blocks."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, data: str) -> Any:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)


def _dry_run(to: str, ex: Any, spec: Any, rid: str, labels: dict[str, str], output: Output) -> None:
    if to == "k8s":
        cm, job = ex.build(spec, rid, labels=labels)
        if output == Output.json:
            emit_json([cm, job])
        else:
            typer.echo(_yaml([cm, job]), nl=False)
        return
    from aimass.orchestrator.executors.base import build_entrypoint, entrypoint_string

    argv = build_entrypoint(getattr(ex, "action", "run"), spec_path="pipeline.yaml", run_id=rid)
    plan = {"backend": to, "address": getattr(ex, "address", getattr(ex, "url", None)), "run_id": rid,
            "entrypoint": entrypoint_string(argv), "labels": labels, "spec": spec.dump()}
    if output == Output.json:
        emit_json(plan)
    else:
        typer.echo(_yaml([plan]), nl=False)


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
