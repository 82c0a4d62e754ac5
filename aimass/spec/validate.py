"""Load and validate a pipeline: YAML -> envelope -> per-step configs -> named lint checks.

All problems are collected and raised together as :class:`~aimass.exceptions.SpecErrors`, each with
``file:line``, what was wrong, what was received and how to fix it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aimass.exceptions import SpecError, SpecErrors
from aimass.spec.configs import STEP_CONFIGS, get_step_config
from aimass.spec.dag import find_cycle
from aimass.spec.models import PipelineSpec, StepSpec
from aimass.spec.yaml_loader import LineMap, load_yaml

__all__ = ["load_pipeline", "parse_pipeline", "validate_pipeline", "LINT_CHECKS", "pydantic_errors"]


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read, parse and fully validate a pipeline file.

    Raises:
        SpecErrors: every problem found, each with ``file:line``.
    """
    p = Path(path)
    if not p.is_file():
        raise SpecError("pipeline file not found", got=str(path), fix="Check the path (relative to the current directory).")
    return parse_pipeline(p.read_bytes(), source=str(path))


def parse_pipeline(text: str | bytes | dict, source: str = "<string>") -> PipelineSpec:
    """Parse a pipeline from YAML/JSON text (or an already-loaded dict) and validate it."""
    if isinstance(text, dict):
        data, lines = text, LineMap(source)
    else:
        data, lines = load_yaml(text, source)
    if not isinstance(data, dict):
        raise SpecErrors([SpecError("a pipeline must be a mapping with apiVersion, kind, metadata and spec",
                                    got=type(data).__name__, location=lines.where(()),
                                    fix="See `aimass pipeline schema` or pipelines/quickstart.yaml.")], source)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        errs = pydantic_errors(exc, lines, (), step_names=_step_names(data))
        errs += _raw_config_errors(data, lines)  # report config problems too, not one layer at a time
        raise SpecErrors(errs, source) from None
    spec._source = source
    validate_pipeline(spec, lines)
    return spec


def _raw_config_errors(data: dict, lines: LineMap) -> list[SpecError]:
    steps = (data.get("spec") or {}).get("steps") if isinstance(data.get("spec"), dict) else None
    if not isinstance(steps, list):
        return []
    names = _step_names(data)
    errs: list[SpecError] = []
    for i, raw in enumerate(steps):
        if not isinstance(raw, dict) or raw.get("type") not in STEP_CONFIGS or not isinstance(raw.get("config", {}), dict):
            continue
        cls = get_step_config(raw["type"])
        try:
            cls.model_validate(raw.get("config", {}))
        except ValidationError as exc:
            errs.extend(pydantic_errors(exc, lines, ("spec", "steps", i, "config"), model_cls=cls, step_names=names))
    return errs


def _step_names(data: dict) -> list[str]:
    steps = (data.get("spec") or {}).get("steps") if isinstance(data.get("spec"), dict) else None
    if not isinstance(steps, list):
        return []
    return [str(s.get("name", "")) if isinstance(s, dict) else "" for s in steps]


_FIXES = {
    "extra_forbidden": "Remove it or fix its spelling{allowed}.",
    "missing": "Add this field.",
    "literal_error": "Use one of the allowed values.",
    "string_pattern_mismatch": "Use lowercase letters, digits and '-', starting and ending with a letter or digit.",
    "finite_number": "Use a finite number (not NaN or Infinity).",
    "greater_than_equal": "Use a value within the allowed range.",
    "greater_than": "Use a value within the allowed range.",
    "less_than_equal": "Use a value within the allowed range.",
    "less_than": "Use a value within the allowed range.",
    "too_long": "Use fewer items.",
    "too_short": "Add at least the minimum number of items.",
}


def _field_name(loc: tuple, step_names: list[str] | None) -> str:
    """`steps[train].config.numWorkers` rather than `spec.steps.1.config.numWorkers`."""
    parts: list[str] = []
    i = 0
    while i < len(loc):
        p = loc[i]
        if p == "spec" and i + 2 < len(loc) + 1 and loc[i + 1:i + 2] == ("steps",) and i + 2 < len(loc) and isinstance(loc[i + 2], int):
            idx = loc[i + 2]
            label = step_names[idx] if step_names and idx < len(step_names) and step_names[idx] else str(idx)
            parts.append(f"steps[{label}]")
            i += 3
            continue
        parts.append(f"[{p}]" if isinstance(p, int) else str(p))
        i += 1
    return ".".join(parts).replace(".[", "[")


def _allowed_fields(model_cls: Any, loc: tuple) -> str:
    """Names of the fields allowed where an unknown field was found, for the 'did you mean' hint."""
    cls = model_cls
    try:
        for part in loc[:-1]:
            if isinstance(part, int):
                continue
            fields = {(f.alias or n): f for n, f in cls.model_fields.items()}
            ann = fields[part].annotation
            args = getattr(ann, "__args__", None)
            cand = [a for a in (args or (ann,)) if hasattr(a, "model_fields")]
            if not cand:
                return ""
            cls = cand[0]
        names = [f.alias or n for n, f in cls.model_fields.items()]
    except Exception:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f" (allowed: {', '.join(names)}){hint}"


def pydantic_errors(exc: ValidationError, lines: LineMap, prefix: tuple, model_cls: Any = None,
                    step_names: list[str] | None = None) -> list[SpecError]:
    """Turn a pydantic ValidationError into SpecErrors that name the line and the fix."""
    out = []
    model_cls = model_cls or exc.title and _model_by_title(exc.title)
    for e in exc.errors(include_url=False):
        loc = prefix + tuple(e["loc"])
        field = _field_name(loc, step_names)
        typ = e["type"]
        fix = _FIXES.get(typ, "")
        if typ == "extra_forbidden":
            fix = fix.format(allowed=_allowed_fields(model_cls, tuple(e["loc"])) if model_cls else "")
        got = e.get("input")
        if typ in ("missing",) or isinstance(got, dict):
            got = None
        elif isinstance(got, float) and not math.isfinite(got):
            got = str(got)
        msg = f"`{field}`: {e['msg']}" if field else e["msg"]
        if typ == "extra_forbidden":
            msg = f"unknown field `{field}`"
        out.append(SpecError(msg, got=got, fix=fix or None, location=lines.where(loc)))
    return out


def _model_by_title(title: str) -> Any:
    return PipelineSpec if title == "PipelineSpec" else None


# --- named lint checks -------------------------------------------------------------------------
LintCheck = Callable[[PipelineSpec, LineMap], list[SpecError]]
LINT_CHECKS: dict[str, LintCheck] = {}


def lint(fn: LintCheck) -> LintCheck:
    LINT_CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def _where(lines: LineMap, spec: PipelineSpec, step: StepSpec, *rest: Any) -> str:
    return lines.where(("spec", "steps", spec.steps.index(step), *rest))


@lint
def check_unique_names(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    seen: dict[str, int] = {}
    errs = []
    for i, s in enumerate(spec.steps):
        if s.name in seen:
            errs.append(SpecError(f"duplicate step name {s.name!r}", location=lines.where(("spec", "steps", i, "name")),
                                  fix=f"Step names must be unique; the first {s.name!r} is step #{seen[s.name] + 1}. Rename one."))
        seen.setdefault(s.name, i)
    return errs


@lint
def check_known_types(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    errs = []
    for s in spec.steps:
        if s.type not in STEP_CONFIGS:
            close = difflib.get_close_matches(s.type, list(STEP_CONFIGS), n=1)
            errs.append(SpecError(f"unknown step type {s.type!r} in step {s.name!r}", location=_where(lines, spec, s, "type"),
                                  fix=(f"Did you mean {close[0]!r}? " if close else "") + f"Known types: {', '.join(sorted(STEP_CONFIGS))}."))
    return errs


@lint
def check_references_exist(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    names = {s.name for s in spec.steps}
    errs = []
    for s in spec.steps:
        for j, d in enumerate(s.depends_on):
            if d == s.name:
                errs.append(SpecError(f"step {s.name!r} depends on itself", location=_where(lines, spec, s, "dependsOn", j),
                                      fix="Remove it from its own dependsOn."))
            elif d not in names:
                close = difflib.get_close_matches(d, sorted(names), n=1)
                errs.append(SpecError(f"step {s.name!r} depends on unknown step {d!r}", location=_where(lines, spec, s, "dependsOn", j),
                                      fix=(f"Did you mean {close[0]!r}? " if close else "") + f"Steps: {', '.join(sorted(names))}."))
        for key, ref in s.inputs.items():
            up = ref.split(".", 1)[0]
            if up not in s.depends_on:
                errs.append(SpecError(f"input {key!r} of step {s.name!r} comes from {up!r}, which is not in its dependsOn",
                                      location=_where(lines, spec, s, "inputs", key), fix=f"Add {up!r} to dependsOn."))
    return errs


@lint
def check_acyclic(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    cycle = find_cycle({s.name: s.depends_on for s in spec.steps})
    if not cycle:
        return []
    first = spec.step(cycle[0])
    return [SpecError(f"dependency cycle: {' -> '.join(cycle)}", location=_where(lines, spec, first, "dependsOn"),
                      fix="A pipeline is a DAG: remove one of these dependsOn edges.")]


@lint
def check_step_configs(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    errs: list[SpecError] = []
    for i, s in enumerate(spec.steps):
        if s.type not in STEP_CONFIGS:
            continue
        cls = get_step_config(s.type)
        try:
            s._parsed = cls.model_validate(s.config)
        except ValidationError as exc:
            errs.extend(pydantic_errors(exc, lines, ("spec", "steps", i, "config"), model_cls=cls,
                                        step_names=[x.name for x in spec.steps]))
    return errs


@lint
def check_inputs_wired(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    from aimass.spec.wiring import WiringError, resolve_inputs

    errs: list[SpecError] = []
    for s in spec.steps:
        if s.type not in STEP_CONFIGS:
            continue
        try:
            resolve_inputs(s, spec)
        except WiringError as e:
            errs.append(SpecError(f"step {s.name!r}: {e.message}", fix=e.fix, location=_where(lines, spec, s, *e.field)))
    return errs


@lint
def check_step_in_pipeline(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    """Type-specific cross-checks, e.g. train needs an upstream that produces a dataset."""
    errs: list[SpecError] = []
    for s in spec.steps:
        hook = getattr(s.parsed_config, "check_in_pipeline", None)
        if hook is None:
            continue
        for message, fix, field in hook(s, spec):
            where = _where(lines, spec, s, *(field or ()))
            errs.append(SpecError(f"step {s.name!r}: {message}", fix=fix, location=where))
    return errs


def validate_pipeline(spec: PipelineSpec, lines: LineMap | None = None) -> PipelineSpec:
    """Run every lint check; raise all problems at once."""
    lines = lines or LineMap(getattr(spec, "_source", "<python>"))
    errs: list[SpecError] = []
    structural_ok = True
    for name, check in LINT_CHECKS.items():
        if name in ("inputs_wired", "step_in_pipeline") and (errs or not structural_ok):
            continue  # cross-checks assume a sound graph and parsed configs
        found = check(spec, lines)
        errs.extend(found)
        if found and name in ("unique_names", "references_exist", "acyclic"):
            structural_ok = False
    if errs:
        raise SpecErrors(errs, lines.source)
    return spec
