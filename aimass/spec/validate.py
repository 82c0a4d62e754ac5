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
from aimass.spec.models import Metadata, PipelineBody, PipelineSpec, StepSpec
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
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read the pipeline file: {exc.strerror}", got=str(path),
                        fix="Check the file's permissions.") from None
    return parse_pipeline(data, source=str(path))


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
        # Report every other problem too (configs, references, cross-checks), not one layer at a time:
        # the lint checks run on a best-effort spec built from whatever parts are well-formed.
        partial = _partial_spec(data)
        if partial is not None:
            errs += run_checks(partial, lines)
        raise SpecErrors(errs, source) from None
    spec._source = source
    validate_pipeline(spec, lines)
    return spec


def _partial_spec(data: dict) -> PipelineSpec | None:
    """A spec whose steps keep every well-formed part of ``data``, for running the lint checks.

    Used only after the envelope failed validation: a step that is itself invalid is kept as a
    placeholder (its name, type, dependsOn, inputs and config where those have the right shape), so
    references to it resolve and its config is still checked, without reporting its own errors twice.
    """
    body = data.get("spec")
    steps = body.get("steps") if isinstance(body, dict) else None
    if not isinstance(steps, list):
        return None
    out: list[StepSpec] = []
    for i, raw in enumerate(steps):
        try:
            out.append(StepSpec.model_validate(raw))
            continue
        except ValidationError:
            pass
        raw = raw if isinstance(raw, dict) else {}
        deps, inputs, config = raw.get("dependsOn"), raw.get("inputs"), raw.get("config", {})
        typ = raw.get("type")
        if not isinstance(typ, str) or not isinstance(config, dict):
            typ = ""  # already reported by pydantic; "" makes every type-dependent check skip the step
        out.append(StepSpec.model_construct(
            name=raw["name"] if isinstance(raw.get("name"), str) else f"<step {i}>",
            type=typ,
            depends_on=[d for d in deps if isinstance(d, str)] if isinstance(deps, list) else [],
            inputs={k: v for k, v in inputs.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(inputs, dict) else {},
            config=config if isinstance(config, dict) else {},
        ))
    return PipelineSpec.model_construct(metadata=Metadata.model_construct(name="<invalid>"),
                                        spec=PipelineBody.model_construct(steps=out))


def _step_names(data: dict) -> list[str]:
    steps = (data.get("spec") or {}).get("steps") if isinstance(data.get("spec"), dict) else None
    if not isinstance(steps, list):
        return []
    return [str(s.get("name", "")) if isinstance(s, dict) else "" for s in steps]


_FIXES = {
    "extra_forbidden": "Remove it or fix its spelling{allowed}",
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


def _field_name(loc: tuple) -> str:
    """A path a user can follow: ``spec.steps[1].config.modelArgs.hidden[0]``, list indexes included."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _step_label(loc: tuple, step_names: list[str] | None) -> str:
    """`` in step 'train'`` when ``loc`` is inside a named step, else ``""``."""
    if len(loc) >= 3 and loc[:2] == ("spec", "steps") and isinstance(loc[2], int):
        idx = loc[2]
        if step_names and idx < len(step_names) and step_names[idx]:
            return f" in step {step_names[idx]!r}"
    return ""


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
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f" (allowed: {', '.join(names)}).{hint}"


def pydantic_errors(exc: ValidationError, lines: LineMap, prefix: tuple, model_cls: Any = None,
                    step_names: list[str] | None = None) -> list[SpecError]:
    """Turn a pydantic ValidationError into SpecErrors that name the line and the fix."""
    out = []
    model_cls = model_cls or exc.title and _model_by_title(exc.title)
    for e in exc.errors(include_url=False):
        loc = prefix + tuple(e["loc"])
        field = _field_name(loc)
        where_step = _step_label(loc, step_names)
        typ = e["type"]
        fix = _FIXES.get(typ, "")
        if typ == "extra_forbidden":
            fix = fix.format(allowed=(_allowed_fields(model_cls, tuple(e["loc"])) if model_cls else "") or ".")
        got = e.get("input")
        if typ in ("missing",) or isinstance(got, dict):
            got = None
        elif isinstance(got, float) and not math.isfinite(got):
            got = str(got)
        msg = f"`{field}`{where_step}: {e['msg']}" if field else e["msg"]
        if typ == "extra_forbidden":
            msg = f"unknown field `{field}`{where_step}"
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
    # by identity: two identical steps (a duplicate) compare equal but sit on different lines
    index = next(i for i, s in enumerate(spec.steps) if s is step)
    return lines.where(("spec", "steps", index, *rest))


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
        if s.type not in STEP_CONFIGS and s.type:  # "" only in a partial spec: pydantic reported it
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
                named = sorted(n for n in names if not n.startswith("<step "))  # not the placeholders of a partial spec
                errs.append(SpecError(f"step {s.name!r} depends on unknown step {d!r}", location=_where(lines, spec, s, "dependsOn", j),
                                      fix=(f"Did you mean {close[0]!r}? " if close else "") + f"Steps: {', '.join(named)}."))
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
    known = {x.name: x.type for x in spec.steps}
    for s in spec.steps:
        ups = [*s.depends_on, *(ref.split(".", 1)[0] for ref in s.inputs.values())]
        if s.type not in STEP_CONFIGS or any(known.get(u) not in STEP_CONFIGS for u in ups):
            continue  # unknown types and steps are reported by their own checks
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
    errs = run_checks(spec, lines)
    if errs:
        raise SpecErrors(errs, lines.source)
    return spec


def run_checks(spec: PipelineSpec, lines: LineMap) -> list[SpecError]:
    """Every lint check, in order, each one whatever the others found: all problems at once.

    Cross-checks skip the parts an earlier check already reported (an unknown step type, a config
    that did not parse), so one mistake is reported once.
    """
    errs: list[SpecError] = []
    for check in LINT_CHECKS.values():
        errs.extend(check(spec, lines))
    return errs
