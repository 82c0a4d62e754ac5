"""The pipeline spec: strict validation, errors with file:line and a fix, safe YAML, JSON Schema."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from aimass.exceptions import SpecError, SpecErrors
from aimass.spec import json_schema, load_pipeline, parse_pipeline
from aimass.spec.dag import find_cycle, topological_order

HEAD = """\
apiVersion: aimass.io/v1alpha1
kind: Pipeline
metadata: {name: t}
spec:
  steps:
"""


def spec_text(steps: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(steps), "    ")


def errors_of(text: str, source: str = "p.yaml") -> list[str]:
    with pytest.raises(SpecErrors) as ei:
        parse_pipeline(text, source=source)
    return [str(e) for e in ei.value.errors]


GOOD = spec_text("""\
- {name: data, type: data, config: {source: "builtin:iris"}}
- name: train
  type: train
  dependsOn: [data]
  config: {model: mlp, numWorkers: 2, epochs: 3}
- {name: evaluate, type: evaluate, dependsOn: [data, train]}
""")


def test_valid_pipeline_parses_with_defaults():
    spec = parse_pipeline(GOOD)
    train = spec.step("train")
    assert train.parsed_config.num_workers == 2
    assert train.parsed_config.optimizer.lr == pytest.approx(1e-3)
    assert spec.step("data").parsed_config.split.train == pytest.approx(0.7)
    assert train.retries.max_attempts == 1


def test_every_example_pipeline_validates(repo_root):
    files = sorted((repo_root / "pipelines").glob("*.yaml"))
    assert files, "pipelines/ has no examples"
    for f in files:
        spec = load_pipeline(f)
        assert spec.steps


def test_unknown_field_names_line_and_suggests():
    errs = errors_of(spec_text("""\
- name: data
  type: data
  config:
    source: "builtin:iris"
    normalise: standard
"""))
    assert len(errs) == 1
    assert errs[0].startswith("p.yaml:10:")
    assert "unknown field `spec.steps[0].config.normalise` in step 'data'" in errs[0]
    assert "Did you mean 'normalize'?" in errs[0]


def test_wrong_type_and_range_report_value_and_line():
    errs = errors_of(spec_text("""\
- {name: data, type: data, config: {source: "builtin:iris"}}
- name: train
  type: train
  dependsOn: [data]
  config:
    numWorkers: 0
    epochs: many
"""))
    joined = "\n".join(errs)
    assert "p.yaml:11:" in joined and "numWorkers" in joined and "(got 0)" in joined
    assert "p.yaml:12:" in joined and "epochs" in joined and "'many'" in joined


def test_absurd_resources_and_nan_are_rejected():
    errs = errors_of(spec_text("""\
- {name: data, type: data, config: {source: "builtin:iris"}, resources: {gpu: -1}}
- name: train
  type: train
  dependsOn: [data]
  config: {numWorkers: 1000000, optimizer: {lr: .nan}}
"""))
    joined = "\n".join(errs)
    assert "resources.gpu" in joined
    assert "numWorkers" in joined and "1000000" in joined
    assert "finite number" in joined


def test_cycle_missing_reference_duplicate_and_unknown_type():
    errs = errors_of(spec_text("""\
- {name: a, type: data, config: {source: "builtin:iris"}, dependsOn: [c]}
- {name: b, type: train, dependsOn: [a, nope]}
- {name: c, type: evaluate, dependsOn: [b]}
- {name: c, type: trian}
"""))
    joined = "\n".join(errs)
    assert "duplicate step name 'c'" in joined
    assert "unknown step 'nope'" in joined
    assert "unknown step type 'trian'" in joined and "Did you mean 'train'" in joined


def test_cycle_is_reported_with_its_path():
    errs = errors_of(spec_text("""\
- {name: a, type: data, config: {source: "builtin:iris"}, dependsOn: [c]}
- {name: b, type: train, dependsOn: [a]}
- {name: c, type: evaluate, dependsOn: [b]}
"""))
    assert any("dependency cycle" in e and "a -> b -> c -> a" in e.replace("c -> a -> b -> c", "a -> b -> c -> a") for e in errs), errs


def test_missing_input_is_explained():
    errs = errors_of(spec_text("""\
- {name: data, type: data, config: {source: "builtin:iris"}}
- {name: evaluate, type: evaluate, dependsOn: [data]}
"""))
    assert any("needs an input 'model'" in e for e in errs)


def test_ambiguous_input_needs_explicit_wiring():
    base = """\
- {name: d1, type: data, config: {source: "builtin:iris"}}
- {name: d2, type: data, config: {source: "builtin:wine"}}
- {name: train, type: train, dependsOn: [d1, d2]%s}
"""
    errs = errors_of(spec_text(base % ""))
    assert any("could come from ['d1', 'd2']" in e and "inputs: {dataset: d1}" in e for e in errs)
    spec = parse_pipeline(spec_text(base % ", inputs: {dataset: d2}"))
    assert spec.step("train").inputs == {"dataset": "d2"}


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ("!!python/object/apply:os.system ['echo hi']", "tag"),
        ("a: &a [1]\nb: !!binary aGk=", "tag"),
        ("apiVersion: x\napiVersion: y\n", "duplicate key 'apiVersion'"),
        ("a: [1, 2\n", "YAML syntax error"),
        ("", "empty"),
        ("---\na: 1\n---\nb: 2\n", "one YAML document"),
        ("- 1\n- 2\n", "must be a mapping"),
    ],
)
def test_unsafe_or_broken_yaml_is_rejected(doc, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_pipeline(doc, source="bad.yaml")


def test_alias_bomb_fails_fast():
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i-1}"] * 10) + "]")
    with pytest.raises(SpecError, match="alias bomb"):
        parse_pipeline("\n".join(lines))


def test_deep_nesting_and_huge_documents_are_rejected():
    deep = "a: " + "[" * 100 + "]" * 100
    with pytest.raises(SpecError, match="nested deeper"):
        parse_pipeline(deep)
    with pytest.raises(SpecError, match="larger than"):
        parse_pipeline("a: " + "x" * (2 << 20))


def test_errors_are_picklable_for_ray():
    import pickle

    with pytest.raises(SpecErrors) as ei:
        parse_pipeline(spec_text("- {name: a, type: nope}\n"))
    again = pickle.loads(pickle.dumps(ei.value))
    assert str(again) == str(ei.value)
    assert again.to_dict()["errors"]


def test_json_schema_covers_step_configs_and_forbids_extras():
    schema = json_schema()
    jsonschema = pytest.importorskip("jsonschema")
    data = parse_pipeline(GOOD).dump()
    jsonschema.validate(data, schema)
    data["spec"]["steps"][1]["config"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
    assert json.dumps(schema)


def test_python_builder_matches_yaml():
    from aimass import Pipeline

    p = Pipeline("t")
    d = p.step("data", "data", source="builtin:iris")
    t = p.step("train", "train", depends_on=[d], model="mlp", num_workers=2, epochs=3)
    p.step("evaluate", "evaluate", depends_on=[d, t])
    assert p.to_spec().dump() == parse_pipeline(GOOD).dump()
    with pytest.raises(SpecErrors, match="numWorkers"):
        Pipeline("t").step("data", "data", source="builtin:iris") and None
        bad = Pipeline("t")
        bad.step("data", "data", source="builtin:iris")
        bad.step("train", "train", depends_on=["data"], num_workers=-1)
        bad.to_spec()


def test_dag_helpers():
    edges = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert topological_order(edges) == ["a", "b", "c", "d"]
    assert find_cycle(edges) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) in (["a", "b", "a"], ["b", "a", "b"])


def test_load_pipeline_missing_file(tmp_path: Path):
    with pytest.raises(SpecError, match="not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_spec_reference_doc_is_current(repo_root):
    from aimass.spec.reference import render

    assert (repo_root / "docs" / "spec.md").read_text() == render() + "\n", "run: python -m aimass.spec.reference > docs/spec.md"


def test_step_type_description_names_only_types_that_exist():
    import re

    from aimass.spec import StepSpec
    from aimass.spec.configs import step_types

    text = StepSpec.model_fields["type"].description
    named = re.search(r"\(([a-z, ]+)\)", text).group(1).split(", ")
    assert named and set(named) <= set(step_types()), (named, step_types())
