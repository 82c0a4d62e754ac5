"""Request and response bodies of the control-plane API (they make its OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from aimass.orchestrator.executors.base import RUN_ID_PATTERN

__all__ = ["SERVER_OWNED_FIELDS", "SubmitRunRequest", "RunOut", "RunList", "ErrorBody", "ErrorItem", "Health"]

# Fields a client may not set: the server decides them (RELIABILITY.md, job submission).
SERVER_OWNED_FIELDS = {
    "status", "state", "owner", "namespace", "serviceAccount", "serviceAccountName", "service_account", "image",
    "entrypoint", "runtimeEnv", "runtime_env", "runtimeEnvYAML", "submittedAt", "backend", "cluster", "clusterSelector",
    "command", "args", "env",
}

LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")]
State = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class SubmitRunRequest(BaseModel):
    """Submit a pipeline: the document as a JSON object (``spec``) or as YAML text (``specYaml``).

    Only these fields exist. Everything about *where and how* it runs (namespace, service account,
    image, entrypoint, owner, status) is decided by the server and cannot be set here.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"specYaml": "apiVersion: aimass.io/v1alpha1\nkind: Pipeline\nmetadata: {name: demo}\nspec:\n  steps:\n"
                                  "  - {name: data, type: data, config: {source: 'builtin:iris'}}\n",
                      "labels": {"team": "vision"}}]})

    spec: dict[str, Any] | None = Field(None, description="The pipeline document (apiVersion, kind, metadata, spec) as a JSON object.")
    spec_yaml: str | None = Field(None, alias="specYaml", max_length=1_048_576,
                                  description="The pipeline document as YAML (or JSON) text; its errors name the line.")
    run_name: str | None = Field(None, alias="runName", pattern=RUN_ID_PATTERN,
                                 description="The run id to use (at most 40 lowercase letters, digits and '-'); generated when absent.")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16,
                                               description="Up to 16 labels (unprefixed keys), copied onto the run.")

    @model_validator(mode="after")
    def _one_spec(self) -> "SubmitRunRequest":
        if (self.spec is None) == (self.spec_yaml is None):
            raise ValueError("give exactly one of `spec` (an object) or `specYaml` (text)")
        return self


class RunOut(_Model):
    """A submitted run as the server sees it."""

    run_id: str = Field(description="The run id.")
    pipeline: str = Field(description="The pipeline's metadata.name.")
    state: State = Field(description="PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED or UNKNOWN.")
    message: str | None = Field(None, description="Why it is in this state, when known.")
    owner: str | None = Field(None, description="Who submitted it (the token's identity).")
    namespace: str | None = Field(None, description="Where it runs.")
    backend: str = Field(description="k8s or ray.")
    submitted_at: float | None = Field(None, description="Seconds since the epoch.")
    started_at: float | None = Field(None, description="Seconds since the epoch.")
    finished_at: float | None = Field(None, description="Seconds since the epoch.")
    labels: dict[str, str] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict, description="The backend's own status fields.")


class RunList(_Model):
    items: list[RunOut]


class ErrorItem(BaseModel):
    error: str = Field(description="A stable code, e.g. invalid_spec, unauthorized, rate_limited.")
    message: str = Field(description="What was wrong.")
    got: Any = Field(None, description="What was received.")
    fix: str | None = Field(None, description="How to fix it.")
    location: str | None = Field(None, description="Where: file:line for specs, a field path for requests.")
    retryable: bool = Field(False, description="Whether retrying the same request may succeed.")


class ErrorBody(ErrorItem):
    """Every error response."""

    errors: list[ErrorItem] | None = Field(None, description="Each problem, when there were several.")


class Health(BaseModel):
    status: str
    detail: str | None = None
