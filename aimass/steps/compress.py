"""The ``compress`` and ``export`` steps: candidates from one trained model, measured side by side.

The work itself lives in :mod:`aimass.compress`; these steps load the model and data, save each candidate
to the artifact store, and log the trade-off report (table + accuracy-versus-latency plot) to MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aimass.exceptions import SpecError, StepError
from aimass.steps.base import Step, StepContext

__all__ = ["CompressStep", "EnsembleStep", "ExportStep", "tradeoff_table"]


def _check_tensor_input(card) -> None:
    kind = getattr(card, "input_kind", None) or "tensor"
    if kind != "tensor":
        raise SpecError(f"compress and export take models with tensor input; this model takes {kind!r} input",
                        fix="Compress a model trained on numeric or image-array data (input kind 'tensor').")


def _input_model(ctx: StepContext) -> tuple[dict[str, Any], Path, Any]:
    """The upstream ``model`` output: its reference, a local directory holding it, and the loaded model."""
    import tempfile

    from aimass.models.io import load_model

    model_ref: dict[str, Any] = ctx.inputs["model"]
    src = ctx.store.local_path(model_ref["key"])
    if src is None:
        src = ctx.store.get_dir(model_ref["key"], Path(tempfile.mkdtemp(prefix="aimass-model-")))
    model = load_model(src)
    _check_tensor_input(model.card)
    return model_ref, Path(src), model


def _write_onnx_candidate(model, directory: Path, opset: int) -> dict[str, Any]:
    import copy

    from aimass.compress import export_onnx
    from aimass.models.io import CARD_FILE

    info = export_onnx(model, directory, list(model.card.input_shape), opset=opset)
    card = copy.deepcopy(model.card)
    card.runtime = "onnxruntime"
    (directory / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2))
    return info


def _parity_or_fail(model, directory: Path, x, parity, what: str) -> dict[str, Any]:
    from aimass.compress import check_parity
    from aimass.compress.onnx import ONNX_FILE

    rep = check_parity(model, directory / ONNX_FILE, x, max_abs_diff=parity.max_abs_diff, min_agreement=parity.min_agreement)
    if not rep.passed:
        raise StepError(f"{what}: ONNX Runtime does not match torch on {rep.rows} held-out rows "
                        f"(max |diff| {rep.max_abs_diff:.3g} vs limit {rep.max_abs_diff_limit:g}, class agreement "
                        f"{rep.class_agreement:.4f} vs min {rep.min_agreement:g})",
                        fix="Inspect the model for operators that export differently, or relax parity.maxAbsDiff / minAgreement.")
    return rep.to_dict()


def tradeoff_table(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    """The trade-off report as a Markdown table (what the MLflow run and the CLI show)."""
    head = f"| candidate | method | {metric} | size MB | p50 ms (b=1) | p95 ms (b=1) | rows/s (b=32) |\n|---|---|---:|---:|---:|---:|---:|\n"
    body = "".join(
        f"| {r['name']} | {r['method']} | {r['metrics'].get(metric, float('nan')):.4f} | {r['size_mb']:.3f} | "
        f"{r['latency_p50_ms']:.3f} | {r['latency_p95_ms']:.3f} | {r['throughput_rows_s']:.0f} |\n" for r in rows)
    return head + body


def _plot(ctx: StepContext, rows: list[dict[str, Any]], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        ax.scatter(r["latency_p50_ms"], r["metrics"].get(metric, float("nan")), s=40 + 400 * r["size_mb"] / max(
            1e-9, max(x["size_mb"] for x in rows)), alpha=0.7)
        ax.annotate(r["name"], (r["latency_p50_ms"], r["metrics"].get(metric, float("nan"))), textcoords="offset points",
                    xytext=(5, 5))
    ax.set_xlabel("p50 latency at batch 1 (ms)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs latency (marker area ~ size on disk)")
    ctx.tracker.log_figure(ctx.mlflow_run_id, fig, "plots/tradeoff.png")
    plt.close(fig)


class CompressStep(Step):
    type_name = "compress"
    code_modules = ("aimass.compress.quantize", "aimass.compress.prune", "aimass.compress.onnx", "aimass.compress.measure")

    def run(self, ctx: StepContext, config) -> dict:
        from aimass.compress import measure_candidate, prune_magnitude, quantize_dynamic_int8
        from aimass.data import open_dataset
        from aimass.models.io import load_model, save_model
        from aimass.spec.configs.compress import OnnxMethod, PruneMethod, QuantizeMethod, candidate_name

        ds = open_dataset(ctx.inputs["dataset"], store=ctx.store)
        model_ref, src, model = _input_model(ctx)
        x, y = ds.split(config.measure.split)
        if len(y) == 0:
            raise SpecError(f"the {config.measure.split} split is empty", fix="Give it a share in the data step's split.")
        measure = dict(latency_iters=config.measure.latency_iterations, throughput_batches=config.measure.throughput_batches)

        rows = [measure_candidate("original", "none", model, src, x, y, ds.class_names, key=model_ref["key"],
                                  root=ctx.store.root_uri, **measure).to_dict()]
        for method in config.methods:
            name = candidate_name(method)
            out = ctx.scratch("candidates", name)
            if isinstance(method, QuantizeMethod):
                cand, info = quantize_dynamic_int8(model)
                save_model(cand, out)
            elif isinstance(method, PruneMethod):
                cand, info = prune_magnitude(model, method.amount, method.structured)
                save_model(cand, out)
            elif isinstance(method, OnnxMethod):
                info = _write_onnx_candidate(model, out, method.opset)
                info["parity"] = _parity_or_fail(model, out, x, method.parity, f"candidate {name!r}")
                cand = load_model(out)
            else:  # pragma: no cover - the config's discriminated union admits nothing else
                raise SpecError(f"unknown compression method {method!r}")
            key = ctx.key("candidates", name)
            ctx.store.put_dir(out, key)
            rows.append(measure_candidate(name, method.type, load_model(out), out, x, y, ds.class_names, key=key,
                                          root=ctx.store.root_uri, info=info, **measure).to_dict())

        metric = "accuracy"
        table = tradeoff_table(rows, metric)
        ctx.tracker.log_text(ctx.mlflow_run_id, table, "tradeoff.md")
        ctx.tracker.log_dict(ctx.mlflow_run_id, rows, "tradeoff.json")
        flat: dict[str, float] = {}
        for r in rows:
            flat.update({f"{r['name']}.{k}": v for k, v in r["metrics"].items() if k in ("accuracy", "f1_macro")})
            flat.update({f"{r['name']}.size_mb": r["size_mb"], f"{r['name']}.latency_p50_ms": r["latency_p50_ms"],
                         f"{r['name']}.latency_p95_ms": r["latency_p95_ms"], f"{r['name']}.throughput_rows_s": r["throughput_rows_s"]})
        ctx.log_metrics(flat)
        ctx.log_params({"methods": [m.dump() for m in config.methods], "measure_split": config.measure.split})
        _plot(ctx, rows, metric)
        return {"candidates": rows, "tradeoff": {"metric": metric, "table": table}}


class ExportStep(Step):
    type_name = "export"
    code_modules = ("aimass.compress.onnx",)

    def run(self, ctx: StepContext, config) -> dict:
        from aimass.data import open_dataset
        from aimass.models.io import load_model

        ds = open_dataset(ctx.inputs["dataset"], store=ctx.store)
        model_ref, _, model = _input_model(ctx)
        x, _ = ds.split(config.split)
        out = ctx.scratch("onnx")
        info = _write_onnx_candidate(model, out, config.opset)
        info["parity"] = _parity_or_fail(model, out, x, config.parity, "export")
        key = ctx.key("model")
        ctx.store.put_dir(out, key)
        ctx.log_params({"format": config.format, "opset": config.opset, "exporter": info["exporter"]})
        ctx.log_metrics({"parity_max_abs_diff": info["parity"]["max_abs_diff"],
                         "parity_class_agreement": info["parity"]["class_agreement"], "onnx_bytes": info["bytes"]})
        card = load_model(out).card.to_dict()
        return {"model": {"key": key, "root": ctx.store.root_uri, "card": card, "history": model_ref.get("history", []),
                          "parent_key": model_ref["key"]},
                "export_report": info}


class EnsembleStep(Step):
    type_name = "ensemble"
    code_modules = ("aimass.compress.ensemble",)

    def run(self, ctx: StepContext, config) -> dict:
        import tempfile

        from aimass.compress.ensemble import EnsembleModel, check_members, fit_ensemble
        from aimass.data import open_dataset
        from aimass.models.io import load_model
        from aimass.steps.evaluate import classification_metrics

        ds = open_dataset(ctx.inputs["dataset"], store=ctx.store)
        members, info, names = [], [], []
        for i, ref in enumerate(ctx.inputs.get("model") or []):
            src = ctx.store.local_path(ref["key"])
            if src is None:
                src = ctx.store.get_dir(ref["key"], Path(tempfile.mkdtemp(prefix="aimass-ens-")))
            members.append(load_model(src))
            names.append(ref["key"])
            info.append({"dir": f"m{i}", "source": "run", "key": ref["key"]})
        for uri in config.members:
            pinned = ctx.tracker.resolve_model_uri(uri)
            d = ctx.tracker.download_model_dir(pinned["uri"], Path(tempfile.mkdtemp(prefix="aimass-ens-")))
            members.append(load_model(d))
            names.append(pinned["uri"])
            info.append({"dir": f"m{len(info)}", "source": "registry", "uri": pinned["uri"], "name": pinned["name"],
                         "version": pinned["version"]})
        check_members([m.card for m in members], names)
        for m in members:
            _check_tensor_input(m.card)
        x_val, y_val = ds.split("val")
        params = fit_ensemble(members, config.method, x_val, y_val, seed=ctx.seed)
        ens = EnsembleModel.build(members, config.method, params, info)
        out = ctx.scratch("ensemble")
        ens.save(out)
        key = ctx.key("model")
        ctx.store.put_dir(out, key)

        import torch

        x, y = ds.split(config.split)
        report: dict[str, Any] = {"members": {}}
        with torch.no_grad():
            xt = torch.as_tensor(x)
            for i, (m, n) in enumerate(zip(members, names, strict=False)):
                report["members"][f"m{i}"] = {"source": n, **classification_metrics(y, m.predict_proba(xt).numpy(), ds.class_names)[0]}
            report["ensemble"] = classification_metrics(y, ens.predict_proba(xt).numpy(), ds.class_names)[0]
        report["method"], report["params"] = config.method, params
        ctx.log_params({"method": config.method, "members": names})
        ctx.log_metrics({**{f"{k}.accuracy": v["accuracy"] for k, v in report["members"].items()},
                         "ensemble.accuracy": report["ensemble"]["accuracy"], "ensemble.f1_macro": report["ensemble"]["f1_macro"]})
        ctx.tracker.log_dict(ctx.mlflow_run_id, report, "ensemble_report.json")
        return {"model": {"key": key, "root": ctx.store.root_uri, "card": ens.card.to_dict(), "history": []},
                "ensemble_report": report}
