"""`aimass pipeline validate` on hostile or broken files: clear errors with file:line, never a traceback,
every problem at once, and paths a user can follow (``spec.steps[0].config.source``)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aimass.cli.main import app
from aimass.exceptions import SpecError, SpecErrors
from aimass.spec import parse_pipeline

HEAD = """\
apiVersion: aimass.io/v1alpha1
kind: Pipeline
metadata: {name: t}
spec:
  steps:
"""


def spec_text(steps: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(steps), "    ")


def validate(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["pipeline", "validate", str(path), *args])
    # a crash is an exception other than the clean exit the command asks for
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecErrors) as ei:
        parse_pipeline(text, source="p.yaml")
    return [str(e) for e in ei.value.errors]


def test_non_utf8_file_is_a_clear_error_with_its_line(tmp_path: Path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("apiVersion: aimass.io/v1alpha1\nkind: Pipeline\nmetadata: {name: café}\n".encode("latin-1"))
    code, out = validate(f)
    assert code == 2
    assert f"{f}:3" in out and "not valid UTF-8" in out and "Save the file as UTF-8" in out


def test_utf8_bom_is_accepted():
    good = spec_text('- {name: data, type: data, config: {source: "builtin:iris"}}\n')
    assert parse_pipeline(("\ufeff" + good).encode()).name == "t"


@pytest.mark.parametrize("doc, line", [
    ("a: " + "[" * 5000 + "]" * 5000, 1),                              # flow sequences
    ("a: " + "{a: " * 3000 + "}" * 3000, 1),                           # flow mappings
    ("a:\n" + "".join("  " * i + "- \n" for i in range(300)), 33),     # block sequences: the 33rd level
])
def test_deeply_nested_yaml_is_a_clear_error(tmp_path: Path, doc: str, line: int):
    f = tmp_path / "deep.yaml"
    f.write_text(doc)
    code, out = validate(f)
    assert code == 2
    assert f"{f}:{line}:" in out and "nested deeper than 32 levels" in out


@pytest.mark.parametrize("doc, fragment, line", [
    ("a: 1\nb: " + "9" * 5000, "bad value", 2),        # Python refuses to build a 5,000-digit int
    ("a: 1\nb: 2020-13-45\n", "month must be in 1..12", 2),  # YAML resolves it as a date
    ("a: 1\nb: x\x00\n", "control character 0x00", 2),
])
def test_values_python_cannot_build_are_spec_errors(doc: str, fragment: str, line: int):
    with pytest.raises(SpecError, match=fragment) as ei:
        parse_pipeline(doc, source="v.yaml")
    assert ei.value.location == f"v.yaml:{line}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=300),
    st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>'\"#%@ \n\tab1.\x00\x85\ufeff")), max_size=300),
))
def test_any_input_gives_spec_errors_only(blob):
    try:
        parse_pipeline(blob, source="fuzz.yaml")
    except SpecError:
        pass


def test_unknown_model_is_reported_with_every_other_problem(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text(spec_text("""\
- {name: data, type: data, config: {source: "builtin:digits"}, resources: {gpu: -1}}
- {name: train, type: train, dependsOn: [data], config: {model: nosuch}}
- {name: tune, type: tune, dependsOn: [data], config: {train: {model: alsonot}, searchSpace: {optimizer.lr: {loguniform: [0.001, 0.1]}}}}
- {name: ev, type: evaluate, dependsOn: [data, train], config: {split: nope}}
- {name: c, type: trian, dependsOn: [zz]}
"""))
    code, out = validate(f, "-o", "json")
    assert code == 2
    body = json.loads(out)
    found = {e["message"]: e["location"] for e in body["errors"]}
    text = "\n".join(found)
    # an envelope error (resources), a config error, a reference error, an unknown type...
    assert "`spec.steps[0].resources.gpu` in step 'data'" in text
    assert "`spec.steps[3].config.split` in step 'ev'" in text
    assert "unknown step type 'trian'" in text and "unknown step 'zz'" in text
    # ... and the cross-checks too, each on its own line
    assert found["step 'train': unknown model 'nosuch'"] == f"{f}:7"
    assert found["step 'tune': unknown model 'alsonot'"] == f"{f}:8"
    assert len(body["errors"]) == 6, text


def test_cross_checks_run_beside_a_config_error_in_another_step():
    errs = errors_of(spec_text("""\
- {name: data, type: data, config: {}}
- {name: train, type: train, dependsOn: [data], config: {model: nosuch}}
"""))
    assert any("`spec.steps[0].config.source` in step 'data': Field required" in e for e in errs), errs
    assert any("unknown model 'nosuch'" in e for e in errs), errs


def test_a_broken_step_is_checked_once_and_still_resolves_references():
    errs = errors_of(spec_text("""\
- {name: data, type: data, config: {source: "builtin:iris"}, retries: {maxAttempts: 0}}
- {name: train, type: train, dependsOn: [data], config: 7}
- {name: ev, type: evaluate, dependsOn: [data, train]}
"""))
    joined = "\n".join(errs)
    assert len(errs) == 2, joined  # no "unknown step 'data'", no second report of train's config
    assert "p.yaml:6: `spec.steps[0].retries.maxAttempts` in step 'data'" in joined
    assert "p.yaml:7: `spec.steps[1].config` in step 'train'" in joined


def test_cnn_without_image_shape_fails_at_validation(tmp_path: Path):
    f = tmp_path / "cnn.yaml"
    f.write_text(spec_text("""\
- {name: data, type: data, config: {source: "builtin:digits"}}
- {name: train, type: train, dependsOn: [data], config: {model: cnn}}
- name: tune
  type: tune
  dependsOn: [data]
  config:
    train: {model: cnn}
    searchSpace: {optimizer.lr: {loguniform: [0.001, 0.1]}}
"""))
    code, out = validate(f, "-o", "json")
    assert code == 2
    errs = json.loads(out)["errors"]
    assert [e["location"] for e in errs] == [f"{f}:7", f"{f}:12"]  # train's model, tune's train.model
    assert all("has no imageShape" in e["message"] and "imageShape: [1, 8, 8]" in e["fix"] for e in errs)
    f.write_text(f.read_text().replace('"builtin:digits"', '"builtin:digits", imageShape: [1, 8, 8]'))
    assert validate(f)[0] == 0


def test_error_paths_include_list_indexes_in_text_and_json(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text(spec_text("""\
- {name: data, type: data, config: {imageShape: [1, x, 8]}}
"""))
    code, out = validate(f)
    assert code == 2
    # rich must not swallow `[0]` or `[1]` as markup
    assert "`spec.steps[0].config.source` in step 'data'" in out
    assert "`spec.steps[0].config.imageShape[1]` in step 'data'" in out
    code, out = validate(f, "-o", "json")
    messages = [e["message"] for e in json.loads(out)["errors"]]
    assert any(m.startswith("`spec.steps[0].config.imageShape[1]`") for m in messages), messages


def test_duplicate_identical_steps_point_at_their_own_lines():
    errs = errors_of(spec_text("""\
- {name: data, type: data, config: {source: "builtin:iris"}}
- {name: data, type: data, config: {source: "builtin:iris"}}
"""))
    assert errs == [e for e in errs if "p.yaml:7: duplicate step name 'data'" in e], errs


def test_unreadable_file_is_a_spec_error(tmp_path: Path):
    import os

    f = tmp_path / "locked.yaml"
    f.write_text("a: 1\n")
    f.chmod(0)
    try:
        if os.access(f, os.R_OK):
            pytest.skip("running as a user who can read any file")
        code, out = validate(f)
        assert code == 2 and "cannot read the pipeline file" in out
    finally:
        f.chmod(0o600)


_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(
    ["data", "train", "tune", "evaluate", "cnn", "mlp", "nosuch", "builtin:digits", "a", "b", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["source", "model", "train", "imageShape", "split", "searchSpace"]), inner, max_size=3), max_leaves=8)
_steps = st.lists(st.dictionaries(st.sampled_from(["name", "type", "dependsOn", "inputs", "config", "retries", "resources"]),
                                  _values, max_size=6), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_steps)
def test_any_structure_of_steps_gives_spec_errors_only(steps):
    doc = {"apiVersion": "aimass.io/v1alpha1", "kind": "Pipeline", "metadata": {"name": "t"}, "spec": {"steps": steps}}
    try:
        parse_pipeline(doc, source="fuzz.yaml")
    except SpecError:
        pass
