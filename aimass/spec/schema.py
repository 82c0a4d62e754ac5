"""JSON Schema of the pipeline document, for editors (yaml-language-server) and API clients."""

from __future__ import annotations

from typing import Any

from aimass.spec.configs import get_step_config, step_types
from aimass.spec.models import PipelineSpec

__all__ = ["json_schema"]


def json_schema() -> dict[str, Any]:
    """The pipeline schema; each step's ``config`` is tied to its type's schema with if/then."""
    schema = PipelineSpec.model_json_schema(by_alias=True)
    defs = schema.setdefault("$defs", {})
    branches = []
    for t in step_types():
        cfg = get_step_config(t).model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        for k, v in cfg.pop("$defs", {}).items():
            defs.setdefault(k, v)
        name = f"{t.capitalize()}StepConfig"
        defs[name] = cfg
        branches.append({"if": {"properties": {"type": {"const": t}}, "required": ["type"]},
                         "then": {"properties": {"config": {"$ref": f"#/$defs/{name}"}}}})
    step = defs["StepSpec"]
    step["allOf"] = branches
    step["properties"]["type"]["examples"] = step_types()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "AI Mass Pipeline"
    return schema
