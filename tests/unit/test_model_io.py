"""Model artifacts are data only: both weight formats round-trip, and a pickled object is never run."""
import pickle
from pathlib import Path

import pytest
import torch

from aimass.exceptions import InvalidRequestError
from aimass.models.io import WEIGHT_FILES, load_model, save_model
from aimass.models.registry import ModelCard, build_model


def _mark(path: str) -> None:
    Path(path).write_text("code ran")


class _Payload:
    """What a replaced weights file could hold: unpickling it writes a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_mark, (self.path,))


def _model():
    torch.manual_seed(0)
    return build_model(ModelCard(name="mlp", input_shape=[6], num_classes=3, args={"hidden": [8]}))


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_both_formats_round_trip(tmp_path, fmt):
    m = _model().eval()
    d = save_model(m, tmp_path / fmt, fmt=fmt)
    again = load_model(d)
    x = torch.randn(4, 6)
    assert torch.equal(m(x), again(x))


def test_a_pickled_object_in_the_weights_file_is_refused_and_never_run(tmp_path):
    d = save_model(_model(), tmp_path / "m", fmt="state_dict")
    live, armed = tmp_path / "live", tmp_path / "armed"
    pickle.loads(pickle.dumps(_Payload(live)))
    assert live.read_text() == "code ran"  # the payload does run when unpickled
    torch.save({"net.0.weight": _Payload(armed)}, d / WEIGHT_FILES["state_dict"])
    with pytest.raises(InvalidRequestError, match="holds more than tensors") as ei:
        load_model(d)
    assert not armed.exists()
    assert "pickled objects are never loaded" in str(ei.value.fix)


def test_a_directory_without_weights_says_which_files_it_expected(tmp_path):
    d = save_model(_model(), tmp_path / "m")
    (d / WEIGHT_FILES["safetensors"]).unlink()
    with pytest.raises(InvalidRequestError, match="no weights file"):
        load_model(d)
