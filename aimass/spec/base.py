"""The base model for everything a user writes: strict, camelCase in YAML, snake_case in Python."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["StrictModel", "DNS_LABEL"]

# A Kubernetes DNS-1123 label: step and pipeline names become object names on a cluster.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class StrictModel(BaseModel):
    """Unknown fields are errors, NaN/Inf are errors, YAML keys are camelCase (``numWorkers``)."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        allow_inf_nan=False,
        validate_default=True,
        frozen=False,
    )

    def dump(self) -> dict:
        """The camelCase, JSON-safe form (what a user would write)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
