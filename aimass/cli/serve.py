"""``aimass serve``, ``aimass predict`` and ``aimass serving status|shutdown``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from aimass.cli.common import OUTPUT_OPTION, Output, console, emit_json, fail
from aimass.exceptions import AimassError, InvalidRequestError, ServingError, SpecError

__all__ = ["register"]

serving_app = typer.Typer(help="Inspect and stop serving applications.", no_args_is_help=True)


def load_serve_config(path: Path):
    """Read a serving config YAML (safe loader, line numbers in errors) into a ServeConfig."""
    from pydantic import ValidationError

    from aimass.serving.config import ServeConfig
    from aimass.spec.yaml_loader import load_yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read the serving config: {e.strerror}", got=str(path)) from None
    doc, lines = load_yaml(text, source=str(path))
    if not isinstance(doc, dict):
        raise SpecError("a serving config must be a mapping", got=type(doc).__name__, location=f"{path}:1")
    try:
        return ServeConfig.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(document)"
        raise SpecError(f"{field}: {err['msg']}", location=lines.where(loc),
                        fix="See docs/serving.md for the serving config fields.") from None


def _merge_model(cfg_doc: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    models = [m for m in cfg_doc.get("models", []) if m.get("name") != model["name"]]
    mx = cfg_doc.get("multiplex")
    if mx:
        mx["models"] = [m for m in mx.get("models", []) if m.get("name") != model["name"]]
        if not mx["models"]:
            cfg_doc.pop("multiplex")
    cfg_doc["models"] = models + [model]
    return cfg_doc


def serve_cmd(
    model_uri: Optional[str] = typer.Argument(None, help="models:/NAME@ALIAS or models:/NAME/VERSION (optional with --config)."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Served model name (default: the registered name)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Serving config YAML (ServeConfig, see docs/serving.md).", exists=False),
    app_name: Optional[str] = typer.Option(None, "--app", help="Serve application (default: the config's name, or aimass)."),
    replicas: Optional[int] = typer.Option(None, "--replicas", min=1, help="Fixed replica count (the minimum with --max-replicas)."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", min=1, help="Autoscale up to this many replicas."),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", min=1, help="Rows per batched model call."),
    no_batching: bool = typer.Option(False, "--no-batching", help="One model call per request."),
    canary: Optional[str] = typer.Option(None, "--canary", help="Challenger model URI that gets --canary-share of the traffic."),
    canary_share: float = typer.Option(0.1, "--canary-share", min=0.0, max=1.0, help="Share of traffic for --canary."),
    port: Optional[int] = typer.Option(None, "--port", min=1, max=65535, help="HTTP port of Serve's proxy (AIMASS_SERVE_PORT; default 8000)."),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Serve a registered model on Ray Serve (Open Inference Protocol v2) and return, leaving it serving.

    Runs on the persistent local Ray cluster (started if needed) or on AIMASS_RAY_ADDRESS. A new version
    goes live only once it is ready; a model already served under the same name is updated in place, other
    models of the application keep serving. A bearer token is created at $AIMASS_HOME/serve-token.

    Examples:

      aimass serve models:/digits@champion

      aimass serve models:/digits@champion --replicas 1 --max-replicas 4 --canary models:/digits@challenger --canary-share 0.1

      aimass serve --config serving.yaml

      aimass predict digits --input '[[0.0, 1.0, ...]]'
    """
    from aimass.settings import Settings

    try:
        settings = Settings.load(serve_http_port=port)
        if config is None and model_uri is None:
            raise InvalidRequestError("nothing to serve", fix="Give a MODEL_URI (models:/NAME@ALIAS) or --config FILE.")
        from aimass.serving.config import ModelSpec, ServeConfig, parse_model_uri

        base = load_serve_config(config) if config is not None else None
        from aimass.orchestrator.ray_runtime import ensure_ray

        ensure_ray(settings.ray_address)
        from aimass.serving.controller import load_state
        from aimass.serving.deploy import deploy

        if base is not None:
            doc = base.dump()
            if app_name:
                doc["name"] = app_name
        else:
            # add to (or update in) what the application already serves
            doc = (load_state(app_name or "aimass") or {}).get("config") or {"name": app_name or "aimass", "models": []}
        if model_uri is not None:
            try:
                reg, _, _ = parse_model_uri(model_uri)
            except ValueError as e:
                raise InvalidRequestError(str(e)) from None
            served = name or reg
            existing = next((m for m in doc.get("models", []) if m.get("name") == served), None)
            spec: dict[str, Any] = dict(existing or {})
            spec.update({"name": served, "modelUri": model_uri})
            dep = dict(spec.get("deployment") or {})
            if max_replicas is not None:
                dep.pop("replicas", None)
                dep["autoscaling"] = {"minReplicas": replicas or 1, "maxReplicas": max_replicas}
            elif replicas is not None:
                dep.pop("autoscaling", None)
                dep["replicas"] = replicas
            spec["deployment"] = dep
            bat = dict(spec.get("batching") or {})
            if no_batching:
                bat["enabled"] = False
            if max_batch_size is not None:
                bat["maxBatchSize"] = max_batch_size
            spec["batching"] = bat
            if canary:
                spec["canary"] = {"modelUri": canary, "trafficShare": canary_share}
            ModelSpec.model_validate(spec)
            doc = _merge_model(doc, spec)
        cfg = ServeConfig.model_validate({k: v for k, v in doc.items() if v is not None})
        st = deploy(cfg, settings)
    except AimassError as exc:
        fail(exc, output)
        return
    except ValueError as exc:  # pydantic validation of the flags
        fail(SpecError(str(exc).splitlines()[0] if str(exc) else "invalid serving options", fix=str(exc)), output)
        return
    if output == Output.json:
        emit_json(st)
        return
    _print_app(st)
    first = st["models"][-1]["name"] if st["models"] else "MODEL"
    console.print(f"\nTry: [bold]aimass predict {first} --input '[[...]]'[/]  (token: {st.get('token_file') or 'see auth'})")


def app_tables(st: dict[str, Any]) -> list[Table]:
    """The tables of one application's status: its models, its deployments and its recent rollout events."""
    import datetime as _dt

    from aimass.cli.common import table

    out = []
    t = table("model", "kind", "registered", ("version", {"no_wrap": True}), ("canary", {"no_wrap": True}),
              ("share", {"no_wrap": True}))
    for m in st["models"]:
        t.add_row(m["name"], m["kind"], m["registered"], m["version"], m.get("challenger") or "",
                  "" if m.get("canary_share") is None else f"{m['canary_share']:.0%}")
    out.append(t)
    if st.get("deployments"):
        d = table("deployment", ("status", {"no_wrap": True}), "replicas")
        for n, info in sorted(st["deployments"].items()):
            d.add_row(n, info["status"], ", ".join(f"{k}: {v}" for k, v in info["replicas"].items()))
        out.append(d)
    events = st.get("events") or []
    if events:
        e = table(("time", {"no_wrap": True}), "event", "details")
        for ev in events[-8:]:
            details = {k: v for k, v in ev.items() if k not in ("at", "event")}
            text = json.dumps(details, default=str)
            e.add_row(_dt.datetime.fromtimestamp(ev["at"]).strftime("%H:%M:%S"), ev["event"],
                      text if len(text) <= 240 else text[:237] + "...")
        out.append(e)
    return out


def _print_app(st: dict[str, Any]) -> None:
    console.print(f"[bold]{st['name']}[/]  {st['status']}  {st.get('url') or ''}  auth: {st.get('auth')}")
    if st.get("direct_urls"):
        console.print(f"  direct (ingress replicas, one hop less): {', '.join(st['direct_urls'])}")
    for t in app_tables(st):
        console.print(t)


def _read_input(spec: str) -> Any:
    if spec == "-":
        text = sys.stdin.read()
    elif spec.startswith("@"):
        try:
            text = Path(spec[1:]).read_text()
        except OSError as e:
            raise InvalidRequestError(f"cannot read the input file: {e.strerror}", got=spec[1:],
                                      fix="Give @PATH of a JSON file with rows ([[...], ...]) or a V2 request body.") from None
        except UnicodeDecodeError:
            raise InvalidRequestError("the input file is not text", got=spec[1:],
                                      fix="Give @PATH of a JSON file with rows ([[...], ...]) or a V2 request body.") from None
    else:
        text = spec
    try:
        return json.loads(text)
    except ValueError as e:
        what = f"the input file {spec[1:]}" if spec.startswith("@") else "--input"
        raise InvalidRequestError(f"{what} is not valid JSON ({e})",
                                  fix="Give rows as JSON ([[...], [...]]), a V2 request body, @file.json or - for stdin.") from None


def signature_text(meta: dict[str, Any]) -> str:
    """A model's inputs as one short phrase, e.g. ``input 'input' FP32 [-1, 64] (rows of 64 values)``."""
    parts = []
    for t in meta.get("inputs") or []:
        shape = [int(d) for d in t.get("shape", [])]
        per_row = shape[1:]
        rows = ""
        if per_row and all(d > 0 for d in per_row):
            rows = f" (rows of {' x '.join(str(d) for d in per_row)} value{'s' if math.prod(per_row) != 1 else ''})"
        parts.append(f"input {t.get('name')!r} {t.get('datatype')} {shape}{rows}")
    return "; ".join(parts) or "no declared inputs"


def _given_text(shape: tuple[int, ...]) -> str:
    if len(shape) == 0:
        return "a single number"
    if len(shape) == 1:
        return f"one row of {shape[0]} value{'s' if shape[0] != 1 else ''}"
    per = list(shape[1:])
    return f"{shape[0]} row{'s' if shape[0] != 1 else ''} of {' x '.join(str(d) for d in per)} values (shape {list(shape)})"


def check_rows(model: str, meta: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Refuse rows that cannot fit the model's single numeric input, naming the signature and what was given."""
    specs = meta.get("inputs") or []
    if len(specs) != 1 or specs[0].get("datatype") == "BYTES":
        return  # several inputs or raw inputs: the server validates and names the problem
    want = [int(d) for d in specs[0].get("shape", [])]
    got = list(shape)
    if len(got) == len(want) - 1:
        got = [1, *got]  # one row without its batch dimension
    ok = len(got) == len(want) and all(w < 0 or w == g for w, g in zip(want[1:], got[1:])) and (not got or got[0] > 0)
    if not ok:
        raise InvalidRequestError(f"{model!r} expects {signature_text(meta)}; given {_given_text(shape)}",
                                  fix="Send rows shaped like the signature (see --help for the input formats).")


def predictions_table(model_name: str, version: str | None, preds: list[dict[str, Any]], show_all: bool = False) -> Table:
    """Per row: the predicted class, its probability and the top-k classes (all of them with ``show_all``)."""
    from aimass.cli.common import table

    k = max((len(p["top"]) for p in preds), default=0)
    head = "all classes" if show_all else f"top {k}"
    t = table(("row", {"justify": "right", "no_wrap": True}), ("predicted", {"style": "bold green"}),
              ("p", {"justify": "right", "no_wrap": True}), head,
              title=f"{model_name} v{version}" if version else model_name)
    for r, p in enumerate(preds):
        t.add_row(str(r), p["class"], f"{p['probability']:.3f}", "  ".join(f"{c['class']}: {c['probability']:.3f}" for c in p["top"]))
    return t


def predictions(probs: Any, names: list[str], top_k: int) -> list[dict[str, Any]]:
    """One dict per row: class, index, probability, the top-k classes and the full probability vector."""
    import numpy as np

    rows = probs.reshape(probs.shape[0], -1)
    out = []
    for row in rows:
        order = np.argsort(-row, kind="stable")
        k = int(order[0])
        out.append({"class": names[k], "index": k, "probability": float(row[k]),
                    "top": [{"class": names[i], "probability": float(row[i])} for i in order[:top_k]],
                    "probabilities": {names[i]: float(p) for i, p in enumerate(row)}})
    return out


def predict_cmd(
    model: str = typer.Argument(..., help="Served model name."),
    input: str = typer.Option(..., "--input", "-i", help="JSON rows ([[...]] or [...]), a V2 request body, @file.json, or - (stdin)."),
    url: Optional[str] = typer.Option(None, "--url", help="Server URL (default http://127.0.0.1:$AIMASS_SERVE_PORT)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File with the bearer token (default: AIMASS_SERVE_TOKEN(_FILE), $AIMASS_HOME/serve-token)."),
    version: Optional[str] = typer.Option(None, "--version", help="Pin a served version."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="Classes shown per row, most likely first."),
    show_all: bool = typer.Option(False, "--all", help="Show every class's probability (--output json always has them)."),
    timeout_s: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for each answer of the server."),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Send rows to a served model and print, per row, the predicted class, its probability and the top-k.

    Examples:

      aimass predict digits --input @pipelines/examples/digits-request.json

      aimass predict digits --input '[[0, 0, 5, 13, 9, 1, 0, 0, ...]]' --top-k 5

      aimass predict digits --input @rows.json --output json    # every class's probability

      echo '[[...]]' | aimass predict digits --input -
    """
    import httpx
    import numpy as np

    from aimass.serving.client import Client
    from aimass.settings import Settings

    base = url or ""
    try:
        data = _read_input(input)
        base = url or f"http://127.0.0.1:{Settings.load().serve_http_port}"
        try:
            client = Client(base, token_file=token_file, timeout_s=timeout_s, retries=0)
        except OSError as e:
            raise InvalidRequestError(f"cannot read the token file: {e.strerror}", got=str(e.filename),
                                      fix="Give --token-file PATH of the serving token ($AIMASS_HOME/serve-token by default).") from None
        with client as c:
            meta = _served_model(c, base, model, version)
            if isinstance(data, dict) and "inputs" in data:
                if not isinstance(data["inputs"], list) or not all(isinstance(t, dict) for t in data["inputs"]):
                    raise InvalidRequestError("a V2 request body's inputs must be a list of tensors",
                                              fix='Send {"inputs": [{"name": ..., "shape": [...], "datatype": "FP32", "data": [...]}]}.')
                inputs = {t.get("name"): np.asarray(t.get("data"), dtype=np.float64).reshape(t.get("shape")) for t in data["inputs"]}
            elif isinstance(data, (list, int, float)):
                inputs = np.asarray(data, dtype=np.float64)
                check_rows(model, meta, inputs.shape)
            else:
                raise InvalidRequestError(f"{model!r} expects {signature_text(meta)}; given a JSON {type(data).__name__}",
                                          fix="Give rows as JSON ([[...], [...]]) or a V2 request body with \"inputs\".")
            c.retries = 1
            res = c.infer(model, inputs, version=version)
    except AimassError as exc:
        fail(exc, output)
        return
    except httpx.HTTPError as exc:  # a timeout or a broken connection: one line, never a traceback
        fail(ServingError(f"the inference server at {base} did not answer ({type(exc).__name__})", retryable=True,
                          fix="Check `aimass serving status`; a busy server may need a retry."), output)
        return
    except (ValueError, TypeError) as exc:
        fail(InvalidRequestError(f"--input does not hold numbers in rows ({str(exc).splitlines()[0][:200]})",
                                 fix="Give rows of numbers, e.g. [[0.1, 2, 3], [4, 5, 6]]."), output)
        return
    probs = next(iter(res.outputs.values()))
    names = res.class_names or [str(i) for i in range(probs.shape[-1])]
    n = probs.reshape(probs.shape[0], -1).shape[1]
    preds = predictions(probs, names, n if show_all else min(top_k, n))
    if output == Output.json:
        emit_json({"model_name": res.model_name, "model_version": res.model_version, "predictions": preds})
        return
    console.print(predictions_table(res.model_name, res.model_version, preds, show_all))


def _served_model(c: Any, base: str, model: str, version: str | None) -> dict[str, Any]:
    """The served model's metadata, or one line on why there is none (nothing serving, no such model)."""
    from aimass.exceptions import NotFoundError

    try:
        return c.metadata(model, version)
    except NotFoundError as e:
        raise NotFoundError(f"model {model!r}{f' version {version}' if version else ''} is not served at {base} ({e.message})",
                            fix="See `aimass serving status` for what is served; serve it with "
                                f"`aimass serve models:/{model}@champion`.") from None
    except ServingError as e:
        if e.retryable and "cannot reach" in e.message:
            raise ServingError(f"nothing is serving at {base}, so {model!r} is not served", retryable=True,
                               fix=f"Serve it (`aimass serve models:/{model}@champion` or `aimass run pipelines/quickstart.yaml`), "
                                   "or give --url of the server.") from None
        raise


def _connect_existing(settings) -> bool:
    """Connect to the cluster that serves, without starting one just to look at it."""
    import os

    import ray

    from aimass.orchestrator.ray_runtime import ensure_ray, local_cluster_address

    if ray.is_initialized():
        return True
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if not address and local_cluster_address(settings.home) is None:
        return False
    ensure_ray(address)
    return True


@serving_app.command("status")
def status_cmd(name: Optional[str] = typer.Argument(None, help="Application (all when omitted)."), output: Output = OUTPUT_OPTION) -> None:
    """Applications, their models, versions, canaries, deployments and recent rollout events.

    Example:

      aimass serving status
    """
    from aimass.serving.deploy import status
    from aimass.settings import Settings

    try:
        st = status(name) if _connect_existing(Settings.load()) else {"apps": []}
    except AimassError as exc:
        fail(exc, output)
        return
    if output == Output.json:
        emit_json(st)
        return
    if not st["apps"]:
        console.print("nothing is being served")
    for a in st["apps"]:
        _print_app(a)


@serving_app.command("shutdown")
def shutdown_cmd(name: str = typer.Argument("aimass", help="Application to remove."), output: Output = OUTPUT_OPTION) -> None:
    """Stop serving an application (its deployments and its rollout controller).

    Example:

      aimass serving shutdown aimass
    """
    from aimass.serving.deploy import shutdown
    from aimass.settings import Settings

    try:
        existed = shutdown(name) if _connect_existing(Settings.load()) else False
    except AimassError as exc:
        fail(exc, output)
        return
    if output == Output.json:
        emit_json({"name": name, "removed": existed})
        return
    console.print(f"{name}: {'removed' if existed else 'was not running'}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.command("predict")(predict_cmd)
    app.add_typer(serving_app, name="serving")
