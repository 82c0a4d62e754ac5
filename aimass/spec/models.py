"""The pipeline document: a Kubernetes-like envelope around a DAG of typed steps.

Example (YAML)::

    apiVersion: aimass.io/v1alpha1
    kind: Pipeline
    metadata: {name: quickstart}
    spec:
      seed: 42
      steps:
        - {name: data, type: data, config: {source: "builtin:digits"}}
        - {name: train, type: train, dependsOn: [data], config: {model: mlp, epochs: 5}}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator

from aimass.spec.base import DNS_LABEL, StrictModel
from aimass.spec.configs import BUILTIN_STEP_TYPES

__all__ = ["API_VERSION", "Resources", "RetryPolicy", "StepSpec", "Metadata", "PipelineBody", "PipelineSpec"]

API_VERSION = "aimass.io/v1alpha1"


class Resources(StrictModel):
    """What one step needs from the cluster. Train/tune steps ask for their workers in their config."""

    cpu: float = Field(1.0, ge=0, le=256, description="CPU cores reserved for the step's own process.")
    gpu: float = Field(0.0, ge=0, le=16, description="GPUs reserved for the step's own process.")
    memory_mb: int | None = Field(None, ge=1, le=4_194_304, description="Memory reserved, in MiB.")


class RetryPolicy(StrictModel):
    """Retries for retryable failures (lost workers, storage or network errors). User errors never retry."""

    max_attempts: int = Field(1, ge=1, le=20, description="Total attempts, the first included.")
    backoff_s: float = Field(1.0, ge=0, le=3600, description="Wait before the first retry, in seconds.")
    backoff_multiplier: float = Field(2.0, ge=1, le=10, description="Each later wait is multiplied by this.")
    max_backoff_s: float = Field(60.0, ge=0, le=86400, description="Cap on one wait, in seconds.")

    def delay_s(self, attempt: int) -> float:
        """Wait before attempt number ``attempt`` (2 = first retry)."""
        return min(self.max_backoff_s, self.backoff_s * self.backoff_multiplier ** max(0, attempt - 2))


class StepSpec(StrictModel):
    """One node of the pipeline DAG."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Unique step name (lowercase, digits, '-').")
    type: str = Field(min_length=1, max_length=63,
                      description=f"Step type: one of the built-in types ({', '.join(BUILTIN_STEP_TYPES)}) or a plugin's.")
    depends_on: list[str] = Field(default_factory=list, max_length=100, description="Steps that must finish first.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Explicit input wiring, input name -> upstream step (or 'step.output'), when more than one upstream could provide it.",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="The step type's own settings.")
    resources: Resources = Field(default_factory=Resources, description="Resources of the step's own process.")
    retries: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy for retryable failures.")
    cache: bool = Field(True, description="Reuse the outputs of an identical earlier run of this step.")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400, description="Fail the step after this many seconds.")

    _parsed: Any = PrivateAttr(default=None)

    @field_validator("retries", mode="before")
    @classmethod
    def _int_retries(cls, v: Any) -> Any:
        # `retries: 3` is shorthand for three retries after the first attempt.
        if isinstance(v, int) and not isinstance(v, bool):
            return {"maxAttempts": v + 1}
        return v

    @property
    def parsed_config(self) -> Any:
        """The config validated against the step type's model (set by :func:`aimass.spec.validate`)."""
        return self._parsed


class Metadata(StrictModel):
    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Pipeline name (lowercase, digits, '-').")
    description: str | None = Field(None, max_length=4000, description="What the pipeline is for.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels, copied to MLflow tags.")


class PipelineBody(StrictModel):
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for every random choice (splits, init, shuffles).")
    experiment: str | None = Field(None, max_length=200, description="MLflow experiment; settings' default when unset.")
    max_parallel_steps: int = Field(4, ge=1, le=64, description="Steps run at the same time, at most.")
    steps: list[StepSpec] = Field(min_length=1, max_length=200, description="The steps; order does not matter, dependsOn does.")


class PipelineSpec(StrictModel):
    """A whole pipeline document."""

    api_version: Literal["aimass.io/v1alpha1"] = Field(API_VERSION, description="Always aimass.io/v1alpha1.")
    kind: Literal["Pipeline"] = Field("Pipeline", description="Always Pipeline.")
    metadata: Metadata
    spec: PipelineBody

    _source: str = PrivateAttr(default="<python>")

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def steps(self) -> list[StepSpec]:
        return self.spec.steps

    def step(self, name: str) -> StepSpec:
        for s in self.spec.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.dump(), sort_keys=False)
