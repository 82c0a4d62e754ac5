"""The pipeline spec: schema, safe YAML loading with line numbers, DAG checks, JSON Schema export.

Imports nothing heavy (no Ray, torch or mlflow), so validation is fast and runs anywhere.

Example:
    >>> from aimass.spec import load_pipeline
    >>> spec = load_pipeline("pipelines/quickstart.yaml")
    >>> [s.name for s in spec.steps]
    ['data', 'train', 'evaluate', 'register', 'deploy']
"""

from aimass.spec.models import API_VERSION, Metadata, PipelineBody, PipelineSpec, Resources, RetryPolicy, StepSpec
from aimass.spec.schema import json_schema
from aimass.spec.validate import LINT_CHECKS, load_pipeline, parse_pipeline, validate_pipeline
from aimass.spec.wiring import resolve_inputs

__all__ = [
    "API_VERSION",
    "LINT_CHECKS",
    "Metadata",
    "PipelineBody",
    "PipelineSpec",
    "Resources",
    "RetryPolicy",
    "StepSpec",
    "json_schema",
    "load_pipeline",
    "parse_pipeline",
    "resolve_inputs",
    "validate_pipeline",
]
