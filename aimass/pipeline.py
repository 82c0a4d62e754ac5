"""The Python equivalent of a pipeline YAML file.

Example:
    >>> from aimass import Pipeline
    >>> p = Pipeline("quickstart", seed=42)
    >>> data = p.step("data", "data", source="builtin:digits")
    >>> train = p.step("train", "train", depends_on=[data], model="mlp", num_workers=2, epochs=5)
    >>> p.step("evaluate", "evaluate", depends_on=[data, train])
    'evaluate'
    >>> spec = p.to_spec()          # validated exactly like YAML
    >>> print(p.to_yaml())          # the same document a user could write by hand
"""

from __future__ import annotations

from typing import Any

from pydantic.alias_generators import to_camel

from aimass.spec import PipelineSpec, parse_pipeline

__all__ = ["Pipeline"]


def _camel(d: Any) -> Any:
    if isinstance(d, dict):
        return {to_camel(k) if isinstance(k, str) and "_" in k else k: _camel(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_camel(v) for v in d]
    return d


class Pipeline:
    """Builds a pipeline in Python; ``to_spec()`` validates it with the same checks as YAML."""

    def __init__(self, name: str, *, seed: int = 42, description: str | None = None, labels: dict[str, str] | None = None,
                 experiment: str | None = None, max_parallel_steps: int | None = None) -> None:
        self.name = name
        self.body: dict[str, Any] = {"seed": seed, "steps": []}
        if experiment:
            self.body["experiment"] = experiment
        if max_parallel_steps:
            self.body["maxParallelSteps"] = max_parallel_steps
        self.metadata: dict[str, Any] = {"name": name}
        if description:
            self.metadata["description"] = description
        if labels:
            self.metadata["labels"] = labels

    def step(self, name: str, type: str, *, depends_on: list[str] | None = None, inputs: dict[str, str] | None = None,
             resources: dict[str, Any] | None = None, retries: int | dict[str, Any] | None = None, cache: bool = True,
             timeout_s: float | None = None, **config: Any) -> str:
        """Add a step; ``config`` keys may be snake_case (``num_workers``) or camelCase. Returns the step name."""
        s: dict[str, Any] = {"name": name, "type": type, "config": _camel(config), "cache": cache}
        if depends_on:
            s["dependsOn"] = list(depends_on)
        if inputs:
            s["inputs"] = dict(inputs)
        if resources:
            s["resources"] = _camel(resources)
        if retries is not None:
            s["retries"] = _camel(retries)
        if timeout_s is not None:
            s["timeoutS"] = timeout_s
        self.body["steps"].append(s)
        return name

    def to_dict(self) -> dict[str, Any]:
        return {"apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": self.metadata, "spec": self.body}

    def to_spec(self) -> PipelineSpec:
        return parse_pipeline(self.to_dict(), source=f"<Pipeline {self.name}>")

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def run(self, **kwargs: Any):
        from aimass import run

        return run(self.to_spec(), **kwargs)
