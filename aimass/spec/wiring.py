"""Which upstream step feeds each input of a step.

A step's inputs are declared by its config class (``INPUTS``). Each is taken from the direct
dependency whose type produces an output of that name (``OUTPUTS``), or from ``inputs:`` in the spec
(``dataset: prep`` or ``dataset: prep.dataset``) when the choice would be ambiguous.
"""

from __future__ import annotations

from aimass.spec.configs import get_step_config
from aimass.spec.models import PipelineSpec, StepSpec

__all__ = ["MANY", "WiringError", "resolve_inputs"]


class WiringError(Exception):
    def __init__(self, message: str, fix: str, field: tuple) -> None:
        super().__init__(message)
        self.message, self.fix, self.field = message, fix, field


MANY = "many"
"""An ``INPUTS`` value: the input takes the output of *every* dependsOn step that produces it, as a list."""


def resolve_inputs(step: StepSpec, pipeline: PipelineSpec) -> dict[str, tuple[str, str] | list[tuple[str, str]]]:
    """Map input name -> (upstream step name, output name), or a list of them for a ``MANY`` input.

    Raises WiringError (first problem).
    """
    cfg = get_step_config(step.type)
    wanted: dict[str, bool] = dict(getattr(cfg, "INPUTS", {}))
    out: dict[str, tuple[str, str]] = {}
    for name, ref in step.inputs.items():
        if name not in wanted:
            raise WiringError(f"unknown input {name!r}", f"Inputs of a {step.type} step: {', '.join(wanted) or 'none'}.", ("inputs", name))
        up, _, output = ref.partition(".")
        output = output or name
        produces = getattr(get_step_config(pipeline.step(up).type), "OUTPUTS", ())
        if output not in produces:
            raise WiringError(f"input {name!r} wants output {output!r} of step {up!r}, which produces only {list(produces)}",
                              "Point it at a step that produces it.", ("inputs", name))
        out[name] = (up, output)
    for name, required in wanted.items():
        if name in out:
            continue
        providers = [d for d in step.depends_on if name in getattr(get_step_config(pipeline.step(d).type), "OUTPUTS", ())]
        if required == MANY:  # every dependsOn step that produces it, in dependsOn order (e.g. an ensemble's members)
            if providers:
                out[name] = [(p, name) for p in providers]
            continue
        if len(providers) > 1:
            raise WiringError(f"input {name!r} could come from {providers}",
                              f"Say which one with `inputs: {{{name}: {providers[0]}}}`.", ("inputs",))
        if providers:
            out[name] = (providers[0], name)
        elif required:
            raise WiringError(f"needs an input {name!r} but none of its dependsOn produces one",
                              f"Add a step that produces {name!r} to dependsOn.", ("dependsOn",))
    return out
