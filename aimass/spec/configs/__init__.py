"""Config models of the step types, keyed by type name.

Each built-in step type has a pydantic config model here (pure pydantic: importing it pulls in no
Ray, torch or mlflow), so a pipeline validates fully before anything runs. Implementations live in
:mod:`aimass.steps`. Plugins add types with :func:`register_step_config`.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

__all__ = ["BUILTIN_STEP_TYPES", "STEP_CONFIGS", "get_step_config", "register_step_config", "step_types"]

# type name -> "module:Class" (imported lazily) or the class itself
STEP_CONFIGS: dict[str, Any] = {
    "data": "aimass.spec.configs.data:DataConfig",
    "train": "aimass.spec.configs.train:TrainConfig",
    "evaluate": "aimass.spec.configs.evaluate:EvaluateConfig",
    "register": "aimass.spec.configs.register:RegisterConfig",
    "tune": "aimass.spec.configs.tune:TuneConfig",
    "deploy": "aimass.spec.configs.deploy:DeployConfig",
    "compress": "aimass.spec.configs.compress:CompressConfig",
    "export": "aimass.spec.configs.compress:ExportConfig",
    "ensemble": "aimass.spec.configs.compress:EnsembleConfig",
}


BUILTIN_STEP_TYPES: tuple[str, ...] = tuple(STEP_CONFIGS)


def register_step_config(type_name: str, config_cls: type[BaseModel]) -> None:
    """Register the config model of a custom step type."""
    STEP_CONFIGS[type_name] = config_cls


def _available(name: str) -> bool:
    try:
        get_step_config(name)
        return True
    except (ImportError, AttributeError, KeyError):
        return False


def step_types() -> list[str]:
    """The step types whose config model can be imported."""
    return sorted(n for n in STEP_CONFIGS if _available(n))


def get_step_config(type_name: str) -> type[BaseModel]:
    ref = STEP_CONFIGS[type_name]
    if isinstance(ref, str):
        module, _, attr = ref.partition(":")
        ref = getattr(importlib.import_module(module), attr)
        STEP_CONFIGS[type_name] = ref
    return ref
