"""The ``register`` step: log the model to MLflow, register a version, alias it, and gate ``champion``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aimass.steps.base import Step, StepContext

__all__ = ["RegisterStep", "gate_decision", "choose_candidate"]


def gate_decision(gate, metrics: dict[str, float], champion_metrics: dict[str, float] | None) -> tuple[bool, list[str]]:
    """Whether the new version may become champion, and why (one line per check)."""
    reasons: list[str] = []
    ok = True
    for t in gate.thresholds:
        v = metrics.get(t.metric)
        if v is None:
            ok = False
            reasons.append(f"{t.metric}: not measured (add an evaluate step upstream)")
            continue
        if t.min is not None and v < t.min:
            ok = False
            reasons.append(f"{t.metric}={v:.4f} < min {t.min}")
        elif t.max is not None and v > t.max:
            ok = False
            reasons.append(f"{t.metric}={v:.4f} > max {t.max}")
        else:
            reasons.append(f"{t.metric}={v:.4f} passes")
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
        version = tracker.register(model_uri, config.model_name, run_id=ctx.mlflow_run_id, tags=tags, description=config.description)
        tracker.set_alias(config.model_name, config.challenger_alias, version)

        champion = tracker.version_by_alias(config.model_name, config.champion_alias)
        champion_metrics = None
        if champion is not None and champion["version"] != version:
            champion_metrics = {k[len("metric."):]: float(v) for k, v in champion["tags"].items() if k.startswith("metric.")}
        passed, reasons = gate_decision(config.gate, metrics, champion_metrics)
        if passed:
            tracker.set_alias(config.model_name, config.champion_alias, version)
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
