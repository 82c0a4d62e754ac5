"""Text models, init.from, freezing, parameter groups, LoRA and the bad inputs around them (fast: a tiny BERT)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from aimass.exceptions import InvalidRequestError, NotFoundError, SpecError
from aimass.models import ModelCard
from aimass.models.io import load_model, save_model
from aimass.models.transfer import (
    apply_freeze,
    init_model,
    param_groups,
    resolve_source,
    trainable_parameters,
)
from aimass.training.loop import SplitData, evaluate_arrays
from tests.models._support import minilm_dir

TINY = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 30522, "max_position_embeddings": 64}


def text_card(classes=("neg", "pos"), **args) -> ModelCard:
    return ModelCard("text-transformer", [], len(classes), {"config": TINY, "maxLength": 16, **args}, class_names=list(classes),
                     input_kind="text")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / f, d / f)
    return d


@pytest.fixture
def tiny(tokenizer_dir):
    torch.manual_seed(0)
    model, _, _ = init_model(text_card(tokenizer=str(tokenizer_dir)), None)
    return model


def test_text_model_tokenises_raw_strings_and_bytes_and_round_trips(tiny, tmp_path):
    texts = np.array(["a fine film", "a dull film, really"])
    ids, mask = tiny.encode(texts)
    assert ids.shape == mask.shape and ids.shape[0] == 2 and ids.shape[1] <= 16
    p = tiny.predict_proba(texts)
    assert torch.allclose(tiny.predict_proba([t.encode() for t in texts]), p)  # BYTES rows decode as UTF-8
    out = save_model(tiny, tmp_path / "m")
    files = sorted(p.name for p in (out / "tokenizer").iterdir())
    assert files and all(f.endswith((".json", ".txt")) for f in files), files  # data only, never pickles
    assert "config" in json.loads((out / "card.json").read_text())["args"]
    again = load_model(out)
    assert torch.allclose(again.predict_proba(texts), p, atol=1e-6)


def test_bad_text_is_a_clear_error(tiny):
    with pytest.raises(InvalidRequestError, match="not valid UTF-8"):
        tiny.encode([b"\xff\xfe bad"])
    with pytest.raises(InvalidRequestError, match="more than 100000"):
        tiny.encode(["x" * 100_001])
    with pytest.raises(InvalidRequestError, match="not a string"):
        tiny.encode([3.5])


def test_missing_tokenizer_is_a_clear_error(tiny, tmp_path):
    out = save_model(tiny, tmp_path / "m")
    shutil.rmtree(out / "tokenizer")
    with pytest.raises(InvalidRequestError, match="no tokenizer") as e:
        load_model(out)
    assert "save_pretrained" in str(e.value)
    with pytest.raises(SpecError, match="needs a tokenizer"):
        init_model(text_card(), None)


def test_pickled_tokenizer_file_is_refused(tiny, tmp_path):
    out = save_model(tiny, tmp_path / "m")
    (out / "tokenizer" / "tokenizer.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InvalidRequestError, match="not a data file"):
        load_model(out)


def test_remote_code_is_never_enabled(tokenizer_dir):
    cfg = dict(TINY, auto_map={"AutoModelForSequenceClassification": "evil.Model"})
    with pytest.raises(SpecError, match="trust_remote_code is never enabled"):
        init_model(ModelCard("text-transformer", [], 2, {"config": cfg, "tokenizer": str(tokenizer_dir)}, class_names=["a", "b"],
                             input_kind="text"), None)


def test_init_from_an_aimass_model_copies_every_weight_and_records_lineage(tiny, tmp_path):
    src = save_model(tiny, tmp_path / "src")
    model, card, lineage = init_model(text_card(), {"from": str(src)}, resolve_source(str(src)))
    x = np.array(["the plot was fine", "awful"])
    assert torch.allclose(model.predict_proba(x), tiny.predict_proba(x), atol=1e-6)
    assert card.init_from == str(src) and lineage["new_head"] is False and lineage["source"] == str(src.resolve())
    assert card.lineage == lineage


def test_new_head_when_the_classes_differ(tiny, tmp_path):
    src = save_model(tiny, tmp_path / "src")
    model, card, lineage = init_model(text_card(("a", "b", "c")), {"from": str(src)}, resolve_source(str(src)))
    assert lineage["new_head"] is True and card.num_outputs == 3
    sd, old = model.state_dict(), tiny.state_dict()
    body = [k for k in old if "classifier" not in k]
    assert all(torch.equal(sd[k], old[k]) for k in body)  # the backbone is the source's
    assert sd["backbone.classifier.weight"].shape == (3, 32)


def test_shape_mismatch_names_both_shapes(tiny, tmp_path, tokenizer_dir):
    src = save_model(tiny, tmp_path / "src")
    other = text_card(config=dict(TINY, hidden_size=48, intermediate_size=96))
    with pytest.raises(SpecError) as e:
        init_model(other, {"from": str(src)}, resolve_source(str(src)))
    msg = str(e.value)
    assert "[30522, 32]" in msg and "[30522, 48]" in msg, msg


def test_init_from_that_does_not_exist_and_hub_offline(monkeypatch, tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotFoundError) as e:
        resolve_source("bert-base-uncased", work_dir=tmp_path)
    assert "local directory" in str(e.value) or "directory" in str(e.value)
    assert "s3://" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFoundError, match="neither an aimass model"):
        resolve_source(str(tmp_path / "empty"))


def test_init_from_a_transformers_directory_loads_the_pretrained_weights():
    card = ModelCard("text-transformer", [], 2, {"maxLength": 16}, class_names=["neg", "pos"], input_kind="text")
    model, card, lineage = init_model(card, {"from": str(minilm_dir())}, resolve_source(str(minilm_dir())))
    from safetensors.torch import load_file

    pre = load_file(str(minilm_dir() / "model.safetensors"))
    got = model.backbone.bert.embeddings.word_embeddings.weight
    assert torch.equal(got, pre["embeddings.word_embeddings.weight"])
    assert torch.equal(model.backbone.bert.encoder.layer[5].output.dense.weight, pre["encoder.layer.5.output.dense.weight"])
    assert card.args["config"]["hidden_size"] == 384 and lineage["new_head"] is True


def test_freeze_by_pattern_and_last_blocks_and_param_groups(tiny):
    counts = apply_freeze(tiny, {"freeze": ["*embeddings*"]})
    names = {n for n, p in tiny.named_parameters() if not p.requires_grad}
    assert names and all("embeddings" in n for n in names)
    assert counts["trainable_params"] < counts["total_params"]
    for p in tiny.parameters():
        p.requires_grad_(True)
    apply_freeze(tiny, {"trainLastBlocks": 1})
    trainable = [n for n, p in tiny.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("backbone.bert.encoder.layer.2.", "backbone.bert.pooler", "backbone.classifier"))
                             for n in trainable), trainable
    with pytest.raises(SpecError, match="matches no parameter"):
        apply_freeze(tiny, {"freeze": ["encoder.layers.*"]})
    groups = param_groups(tiny, [{"pattern": "*classifier*", "lr": 1e-2}], 1e-4)
    assert [g["lr"] for g in groups] == [1e-2, 1e-4]
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def test_lora_trains_only_adapters_and_head_and_round_trips(tiny, tmp_path):
    from aimass.models.transfer import merge_lora

    src = save_model(tiny, tmp_path / "src")
    model, card, _ = init_model(text_card(), {"from": str(src), "lora": {"r": 4, "alpha": 8, "targetModules": ["query", "value"]}},
                                resolve_source(str(src)))
    assert card.args["lora"]["r"] == 4  # recorded, so the unmerged model reloads with its adapters
    counts = trainable_parameters(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "classifier" in n for n in trainable), trainable
    assert counts["trainable_params"] < 0.02 * counts["total_params"]
    x = np.array(["fine", "not fine at all"])
    with torch.no_grad():  # move the adapters off zero so that merging has something to fold in
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    p0 = model.predict_proba(x)
    again = load_model(save_model(model, tmp_path / "lora"))
    assert torch.allclose(again.predict_proba(x), p0, atol=1e-5)
    merged = merge_lora(again)
    assert "lora" not in merged.card.args and merged.card.lineage["lora"]["merged"] is True
    plain = load_model(save_model(merged, tmp_path / "merged"))
    assert not any("lora" in k for k in plain.state_dict())
    assert torch.allclose(plain.predict_proba(x), p0, atol=1e-4)


def test_text_multi_head_split_data(tiny, tokenizer_dir):
    heads = [{"name": "sentiment", "kind": "classification", "class_names": ["neg", "pos"]},
             {"name": "stars", "kind": "regression", "class_names": ["stars"], "loss_weight": 0.1}]
    card = ModelCard("text-transformer", [], 2, {"config": TINY, "maxLength": 16, "tokenizer": str(tokenizer_dir)},
                     class_names=["neg", "pos"], input_kind="text", heads=heads)
    model, _, _ = init_model(card, None)
    data = SplitData(model, np.array(["good", "bad", "ok"]), {"sentiment": np.array([1, 0, 1]), "stars": np.array([[5.0], [1.0], [3.0]])})
    loss, acc = evaluate_arrays(model, data)
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert set(model.predict_heads(np.array(["good"]))) == {"sentiment", "stars"}
