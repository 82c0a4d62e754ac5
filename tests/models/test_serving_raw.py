"""The replica's raw-input path (LoadedModel, no Ray): text as str/bytes, images as uint8, the raw signature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimass.exceptions import InvalidRequestError
from aimass.models import ModelCard, build_model
from aimass.models.transfer import init_model
from aimass.serving.model import LoadedModel, raw_signature
from aimass.serving.protocol import Signature
from tests.models._support import minilm_dir
from tests.models.test_transfer import TINY


@pytest.fixture(scope="module")
def text_lm():
    torch.manual_seed(0)
    card = ModelCard("text-transformer", [], 2, {"config": TINY, "maxLength": 16, "tokenizer": str(minilm_dir())},
                     class_names=["neg", "pos"], input_kind="text")
    model, card, _ = init_model(card, None)
    model.eval()
    lm = LoadedModel(model, raw_signature(card), "sent", "1", "cpu")
    lm.warm_up()
    return lm


def test_text_signature_declares_bytes_and_the_replica_tokenises(text_lm):
    sig = text_lm.signature.to_dict()
    assert sig["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
    assert sig["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    rows = np.array([b"what a lovely film", b"the plot was dull"], dtype=object)
    got = text_lm.predict(rows)
    want = text_lm.model.predict_proba(["what a lovely film", "the plot was dull"]).numpy()
    assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-6)
    assert np.allclose(text_lm.predict(np.array(["what a lovely film", "the plot was dull"])), want, atol=1e-6)


def test_numbers_to_a_text_model_and_bytes_to_a_tensor_model_are_clear_errors(text_lm):
    with pytest.raises(InvalidRequestError, match="takes text"):
        text_lm.predict(np.zeros((2, 4), np.float32))
    with pytest.raises(InvalidRequestError, match="not valid UTF-8"):
        text_lm.predict(np.array([b"\xc3\x28"], dtype=object))
    card = ModelCard("mlp", [4], 3, {"hidden": [8]}, class_names=["a", "b", "c"])
    lm = LoadedModel(build_model(card).eval(), Signature.from_card(card), "m", "1", "cpu")
    with pytest.raises(InvalidRequestError, match="takes numbers"):
        lm.predict(np.array([b"hello"], dtype=object))


def test_image_model_takes_uint8_and_multi_head_outputs_are_named():
    heads = [{"name": "shape", "kind": "classification", "class_names": ["circle", "square"]},
             {"name": "size", "kind": "regression", "class_names": ["radius"]}]
    card = ModelCard("resnet", [3, 8, 8], 2, {"widths": [4], "blocks": [1]}, class_names=["circle", "square"], input_kind="image",
                     heads=heads, preprocess={"image": {"size": [8, 8], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}})
    sig = raw_signature(card)
    assert sig.inputs[0].datatype == "UINT8" and sig.inputs[0].shape == (-1, 3, 8, 8)
    assert [(o.name, o.shape) for o in sig.outputs] == [("shape", (-1, 2)), ("size", (-1, 1))]
    lm = LoadedModel(build_model(card).eval(), sig, "img", "1", "cpu")
    lm.warm_up()
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    assert lm.predict(x).shape == (3, 2)
    outs = lm.predict_outputs(x)
    assert set(outs) == {"shape", "size"} and outs["size"].shape == (3, 1)
    with pytest.raises(InvalidRequestError, match="does not fit"):
        lm.predict(np.zeros((1, 3, 4, 4), np.uint8))
