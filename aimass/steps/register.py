"""The ``register`` step: log the model to MLflow, register a version, alias it, and gate ``champion``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aimass.steps.base import Step, StepContext

__all__ = ["RegisterStep", "choose_candidate", "gate_decision", "version_description"]


def gate_decision(gate, metrics: dict[str, float], champion_metrics: dict[str, float] | None) -> tuple[bool, list[str]]:
    """Whether the new version may become champion, and why (one line per check)."""
    reasons: list[str] = []
    ok = True
    for t in gate.thresholds:
        passed, why = t.check(metrics.get(t.metric), missing="not measured (add an evaluate step upstream)")
        ok = ok and passed
        reasons.append(why)
    if gate.compare_metric and champion_metrics is not None:
        new, old = metrics.get(gate.compare_metric), champion_metrics.get(gate.compare_metric)
        if new is None:
            ok = False
            reasons.append(f"{gate.compare_metric}: not measured for the new version")
        elif old is not None:
            better = (new - old >= gate.min_improvement) if gate.mode == "max" else (old - new >= gate.min_improvement)
            ok = ok and better
            reasons.append(f"{gate.compare_metric}: new {new:.4f} vs champion {old:.4f} -> {'better' if better else 'not better'}")
    elif champion_metrics is None:
        reasons.append("no current champion")
    return ok, reasons


def choose_candidate(ctx: StepContext, gate, candidates: list[dict[str, Any]]):
    """The gate's choice among compress candidates; logs every candidate's verdict, fails when none passes."""
    from aimass.compress import Candidate, select_candidate
    from aimass.exceptions import StepError

    cands = [Candidate.from_dict(c) for c in candidates]
    sel = select_candidate(cands, metric=gate.select_metric, mode=gate.mode, max_latency_ms=gate.max_latency_ms,
                           max_size_mb=gate.max_size_mb, max_metric_drop=gate.max_metric_drop, thresholds=gate.thresholds,
                           select=gate.select, prefer=gate.prefer)
    lines = [f"{c.name}: {gate.select_metric}={c.metrics.get(gate.select_metric, float('nan')):.4f} size={c.size_mb:.3f}MB "
             f"p50={c.latency_p50_ms:.3f}ms -> {'; '.join(sel.reasons[c.name])}" for c in cands]
    ctx.tracker.log_text(ctx.mlflow_run_id, "\n".join(lines) + "\n", "gate_candidates.txt")
    if sel.chosen is None:
        ctx.set_tags({"aimass.gate": "failed", "aimass.gate_reasons": " | ".join(lines)[:5000]})
        raise StepError("no candidate passes the gate, so nothing was registered:\n  " + "\n  ".join(lines),
                        fix="Relax maxLatencyMs / maxSizeMb / maxMetricDrop / thresholds, or add compression methods.")
    ctx.set_tags({"aimass.chosen_candidate": sel.chosen.name})
    return sel.chosen


class RegisterStep(Step):
    type_name = "register"

    def run(self, ctx: StepContext, config) -> dict:
        from aimass.models.io import load_model, save_model

        model_ref: dict[str, Any] = ctx.inputs["model"]
        metrics: dict[str, float] = ctx.inputs.get("metrics") or {}
        lineage: dict[str, str] = {}
        if ctx.inputs.get("candidates"):
            chosen = choose_candidate(ctx, config.gate, ctx.inputs["candidates"])
            lineage = {"aimass.candidate": chosen.name, "aimass.compression": chosen.method,
                       "aimass.parent_model_key": model_ref["key"]}
            model_ref = {**model_ref, "key": chosen.key}
            metrics = dict(chosen.metrics)
            metrics.update({"size_mb": chosen.size_mb, "latency_p50_ms": chosen.latency_p50_ms,
                            "latency_p95_ms": chosen.latency_p95_ms, "throughput_rows_s": chosen.throughput_rows_s})
        src = ctx.store.local_path(model_ref["key"])
        if src is None:
            src = ctx.store.get_dir(model_ref["key"], Path(tempfile.mkdtemp(prefix="aimass-reg-")))
        # Re-save through our own loader: only safetensors / weights_only state dicts ever reach the registry.
        model = load_model(src)
        out = Path(ctx.scratch("registered"))
        save_model(model, out, config.weights_format)
        card = model.card
        example = np.zeros((2, *card.input_shape), dtype=np.float32)
        tracker = ctx.tracker
        model_uri = tracker.log_model(ctx.mlflow_run_id, out, card.input_shape, card.num_classes, input_example=example,
                                      input_name=card.input_name, output_name=card.output_name)
        tags = {"aimass.pipeline": ctx.pipeline, "aimass.run_id": ctx.run_id, **lineage, **config.tags}
        tags.update({f"metric.{k}": f"{v:.6g}" for k, v in metrics.items() if isinstance(v, (int, float))})
        # lineage: the version a fine-tuned model started from (train.init.from)
        tags.update({f"aimass.init.{k}": str(v) for k, v in (getattr(card, "lineage", None) or {}).items()
                     if k in ("source", "model", "version") and v is not None})
        version = tracker.register(model_uri, config.model_name, run_id=ctx.mlflow_run_id, tags=tags, description=config.description)
        tracker.set_alias(config.model_name, config.challenger_alias, version)

        champion = tracker.version_by_alias(config.model_name, config.champion_alias)
        champion_metrics = None
        if champion is not None and champion["version"] != version:
            champion_metrics = {k[len("metric."):]: float(v) for k, v in champion["tags"].items() if k.startswith("metric.")}
        passed, reasons = gate_decision(config.gate, metrics, champion_metrics)
        if passed:
            tracker.set_alias(config.model_name, config.champion_alias, version)
        lineage = _lineage(ctx)
        tracker.set_model_version_description(config.model_name, version, version_description(
            user_text=config.description, metrics=metrics, passed=passed, reasons=reasons, champion_alias=config.champion_alias,
            card=card, model_uri=model_uri, pipeline=ctx.pipeline, run_id=ctx.run_id, experiment_id=ctx.experiment_id,
            register_run_id=ctx.mlflow_run_id, **lineage))
        tracker.set_model_version_tag(config.model_name, version, "aimass.gate", "passed" if passed else "failed")
        tracker.set_model_version_tag(config.model_name, version, "aimass.gate_reasons", "; ".join(reasons)[:5000])
        ctx.set_tags({"aimass.model_name": config.model_name, "aimass.model_version": version,
                      "aimass.gate": "passed" if passed else "failed", "aimass.gate_reasons": "; ".join(reasons)})
        ctx.log_metrics({"gate_passed": float(passed)})
        return {
            "model_uri": f"models:/{config.model_name}/{version}",
            "model_version": {"name": config.model_name, "version": version, "champion": passed, "gate": reasons,
                              "logged_model_uri": model_uri},
        }


def _lineage(ctx: StepContext) -> dict[str, Any]:
    """The pipeline run and the upstream step runs of this register step, read back from MLflow.

    Upstream means the steps this one depends on, directly or not, per the pipeline spec the parent
    run logged (``pipeline.yaml``); each comes with its MLflow run, its tags and its metrics.
    """
    from aimass.spec import parse_pipeline
    from aimass.spec.dag import topological_order, upstream_closure
    from aimass.tracking.client import TAG_STEP

    tracker = ctx.tracker
    parent = tracker.get_run(ctx.mlflow_run_id).tags.get("mlflow.parentRunId")
    if not parent:
        return {"parent_run_id": None, "upstream": []}
    siblings = {r.tags.get(TAG_STEP): r for r in tracker.child_runs(parent, ctx.experiment_id) if r.run_id != ctx.mlflow_run_id}
    order = list(siblings)
    text = tracker.read_text(parent, "pipeline.yaml")
    if text:
        try:
            spec = parse_pipeline(text, source="pipeline.yaml")
        except Exception:  # noqa: BLE001 - a description must not fail a registration
            spec = None
        if spec is not None:
            edges = {st.name: st.depends_on for st in spec.steps}
            wanted = upstream_closure(edges, ctx.step_name) if ctx.step_name in edges else set(edges)
            order = [n for n in topological_order(edges) if n in wanted]
    upstream = [siblings[n] for n in order if n in siblings]
    return {"parent_run_id": parent, "upstream": upstream}


def version_description(*, user_text: str | None, metrics: dict[str, float], passed: bool, reasons: list[str],
                        champion_alias: str, card: Any, model_uri: str, pipeline: str, run_id: str, experiment_id: str,
                        register_run_id: str, parent_run_id: str | None, upstream: list[Any]) -> str:
    """The markdown description of a registered version: its metrics, the gate's decision, its data, its lineage.

    ``upstream`` holds the MLflow runs (:class:`~aimass.tracking.client.RunInfo`) of the steps it came
    from, in pipeline order; a data step's run gives the source and the split sizes.
    """
    from aimass.tracking.client import run_link

    out: list[str] = []
    if user_text:
        out += [user_text.strip(), ""]
    out += ["### Gate", f"**{'passed' if passed else 'failed'}**: "
            + (f"this version is `{champion_alias}`." if passed else f"not promoted to `{champion_alias}`.")]
    out += [f"- {r}" for r in reasons]
    out += ["", "### Metrics"]
    shown = {k: v for k, v in sorted(metrics.items()) if isinstance(v, (int, float))}
    if shown:
        out += ["| metric | value |", "|---|---|", *(f"| {k} | {v:.6g} |" for k, v in shown.items())]
    else:
        out.append("none measured (no evaluate step upstream)")
    out += ["", "### Data"]
    data_runs = [r for r in upstream if r.tags.get("aimass.step_type") == "data"]
    for r in data_runs:
        source = r.params.get("config.source") or r.params.get("source") or "?"
        rows = ", ".join(f"{k.removeprefix('rows_')} {int(v)}" for k, v in sorted(r.metrics.items()) if k.startswith("rows_"))
        out.append(f"- step `{r.tags.get('aimass.step')}`: `{source}`" + (f" (rows: {rows})" if rows else ""))
    classes = list(getattr(card, "class_names", []) or [])
    out.append(f"- input shape {list(card.input_shape)}, {card.num_classes} classes"
               + (f": {', '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}" if classes else ""))
    out += ["", "### Lineage", f"- pipeline `{pipeline}`, AI Mass run `{run_id}`"
            + (f" ([MLflow run]({run_link(experiment_id, parent_run_id)}))" if parent_run_id else "")]
    for r in upstream:
        cached = r.tags.get("aimass.cached") == "true"
        src = r.tags.get("aimass.cache_source_run")
        out.append(f"- step `{r.tags.get('aimass.step')}` ({r.tags.get('aimass.step_type', '?')}): "
                   f"[run]({run_link(experiment_id, r.run_id)})" + (f", served from the cache of run `{src}`" if cached and src else ""))
    out.append(f"- model `{card.name}` {json.dumps(card.args, sort_keys=True)}, logged as `{model_uri}` by "
               f"[the register step]({run_link(experiment_id, register_run_id)})")
    return "\n".join(out)
