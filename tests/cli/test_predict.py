"""``aimass predict`` without a cluster: what it shows per row, and one clear line for each kind of bad input.

(Against a real served model: tests/serving/test_cli_predict.py.)"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from typer.testing import CliRunner

from aimass.cli.main import app as cli
from tests.ports import free_port

runner = CliRunner()

META = {"name": "digits", "versions": ["3"], "platform": "aimass",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]}


def invoke(*args: str):
    res = runner.invoke(cli, list(args))
    assert "Traceback" not in res.output, res.output
    return res


def one_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def test_predictions_have_class_probability_and_top_k_in_order():
    from aimass.cli.serve import predictions

    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    preds = predictions(probs, ["setosa", "versicolor", "virginica"], 2)
    assert [p["class"] for p in preds] == ["versicolor", "setosa"]
    assert preds[0]["probability"] == pytest.approx(0.6)
    assert [c["class"] for c in preds[0]["top"]] == ["versicolor", "virginica"]
    assert [c["class"] for c in preds[1]["top"]] == ["setosa", "virginica"]
    assert preds[1]["probabilities"] == pytest.approx({"setosa": 0.5, "versicolor": 0.2, "virginica": 0.3})


@pytest.mark.parametrize("shape, given", [((1, 10), "1 row of 10 values"), ((3, 63), "3 rows of 63 values"),
                                          ((10,), "one row of 10 values"), ((2, 8, 8), "2 rows of 8 x 8 values")])
def test_a_wrong_number_of_features_names_the_signature_and_what_was_given(shape, given):
    from aimass.cli.serve import check_rows
    from aimass.exceptions import InvalidRequestError

    with pytest.raises(InvalidRequestError) as e:
        check_rows("digits", META, shape)
    msg = str(e.value)
    assert "'digits' expects input 'input' FP32 [-1, 64] (rows of 64 values)" in msg and given in msg
    assert "\n" not in msg
    check_rows("digits", META, (5, 64))  # fits: no error
    check_rows("digits", META, (64,))    # one row without its batch dimension


def test_not_served_is_one_line():
    port = free_port()  # nothing listens there
    res = invoke("predict", "digits", "--input", "[[1, 2, 3]]", "--url", f"http://127.0.0.1:{port}")
    assert res.exit_code == 1
    line = one_line(res)
    assert f"nothing is serving at http://127.0.0.1:{port}" in line and "aimass serve models:/digits@champion" in line


def test_a_server_that_never_answers_is_one_line_not_a_traceback():
    with socket.socket() as held:  # accepts connections (the backlog) but never answers
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        port = held.getsockname()[1]
        res = invoke("predict", "digits", "--input", "[[1, 2, 3]]", "--url", f"http://127.0.0.1:{port}", "--timeout", "0.5")
    assert res.exit_code == 1
    assert f"the inference server at http://127.0.0.1:{port} did not answer (ReadTimeout)" in one_line(res)


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read the input file: No such file or directory"),
    (b"rows: [1, 2]\n", "is not valid JSON"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "the input file is not text"),
])
def test_a_wrong_input_file_is_one_line(tmp_path, content, expected):
    f = tmp_path / "rows.json"
    if content is not None:
        f.write_bytes(content)
    res = invoke("predict", "digits", "--input", f"@{f}", "--url", f"http://127.0.0.1:{free_port()}")
    assert res.exit_code == 1
    line = one_line(res)
    assert expected in line and "Give" in line


def test_a_missing_token_file_is_one_line(tmp_path):
    res = invoke("predict", "digits", "--input", "[[1]]", "--token-file", str(tmp_path / "nope"))
    assert res.exit_code == 1 and "cannot read the token file" in one_line(res)


def test_json_errors_are_json():
    res = invoke("predict", "digits", "--input", "[[1", "--output", "json")
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["error"] == "invalid_request" and "not valid JSON" in doc["message"]


def test_a_missing_option_prints_usage_not_a_traceback():
    import subprocess

    from tests.conftest import aimass_bin, cli_env

    out = subprocess.run([aimass_bin(), "predict", "digits"], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "Missing option '--input'" in out.stderr
