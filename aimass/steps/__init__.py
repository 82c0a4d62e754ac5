"""Built-in step types, found through a registry (see :mod:`aimass.steps.base`)."""

from aimass.steps.base import STEPS, Step, StepContext, get_step, register_step

__all__ = ["STEPS", "Step", "StepContext", "get_step", "register_step"]
