"""What every step config declares: the inputs it consumes and the outputs it produces."""

from __future__ import annotations

from typing import Any, ClassVar

from aimass.spec.base import StrictModel

__all__ = ["StepConfig"]


class StepConfig(StrictModel):
    """Base of step configs.

    ``INPUTS`` maps an input name to whether it is required, or to ``"many"`` (a list from every dependsOn step that
    produces it); ``OUTPUTS`` lists what the step produces.
    The validator wires each input to the upstream step that produces it (or to ``inputs:`` in the spec).
    """

    INPUTS: ClassVar[dict[str, bool | str]] = {}
    OUTPUTS: ClassVar[tuple[str, ...]] = ()

    def check_in_pipeline(self, step: Any, pipeline: Any) -> list[tuple[str, str, tuple | None]]:
        """Type-specific cross-checks: a list of (message, fix, field path under the step)."""
        return []
