"""Bad edit input raises a clear error and leaves the model exactly as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model, make_batch
from peft import get_peft_model

from hf_lime import LimeConfig


@pytest.fixture
def model():
    return get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en", "fr"], edit_lr_init=1.0))


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bad_batches():
    good = make_batch("masked_lm")
    no_labels = {k: v for k, v in good.items() if k != "labels"}
    empty_row = dict(good, labels=good["labels"].clone())
    empty_row["labels"][1] = -100
    float_ids = dict(good, input_ids=good["input_ids"].float())
    float_labels = dict(good, labels=good["labels"].float())
    wrong_shape = dict(good, labels=good["labels"][:, :3])
    wrong_mask = dict(good, attention_mask=good["attention_mask"][:, :3])
    one_d_ids = dict(good, input_ids=good["input_ids"][0])
    return [
        (no_labels, ValueError, "labels"),
        (empty_row, ValueError, r"Rows \[1\].*no target"),
        (float_ids, TypeError, "integer"),
        (float_labels, TypeError, "integer"),
        (wrong_shape, ValueError, "shape"),
        (wrong_mask, ValueError, "attention_mask"),
        (one_d_ids, ValueError, "batch, sequence"),
        ([1, 2, 3], TypeError, "mapping"),
    ]


@pytest.mark.parametrize(("batch", "error", "message"), _bad_batches())
def test_bad_batch(model, batch, error, message):
    before = _snapshot(model)
    with pytest.raises(error, match=message):
        model.edit(batch, language="en")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.base_model.applied_edit_ids == []


@pytest.mark.parametrize(
    ("language", "message"),
    [
        ("xx", r"Unknown language.*\['en', 'fr'\]"),
        (None, "Pass the editing `language`"),
        (["en"], "2 rows"),
        (3, r"`language` must be a language code or a list of codes \(one per row\), got 3\."),
    ],
)
def test_bad_language(model, language, message):
    before = _snapshot(model)
    with pytest.raises((ValueError, TypeError), match=message):
        model.edit(make_batch("masked_lm"), language=language)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.base_model.applied_edit_ids == []


def test_model_without_head_is_rejected():
    from transformers import BertConfig, BertModel

    base = BertModel(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    )
    model = get_peft_model(base, LimeConfig(languages=["en"]))
    batch = make_batch("masked_lm")
    with pytest.raises((TypeError, ValueError)):
        model.edit(batch, language="en")
    assert model.base_model.applied_edit_ids == []


def test_non_finite_update_is_refused(model):
    with torch.no_grad():
        model.base_model.edit_lrs.fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        model.edit(make_batch("masked_lm"), language="en")
    assert model.base_model.applied_edit_ids == []


def test_an_edit_that_makes_the_outputs_non_finite_is_refused_and_the_model_is_unchanged():
    model = get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en", "fr"], edit_lr_init=1e-3))
    batch = make_batch("masked_lm")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits
        model.base_model.edit_lrs.log_lrs.fill_(80.0)  # a saved step size of e^80: finite factors, inf outputs
    with pytest.raises(ValueError, match="non-finite"):
        model.edit(batch, language="en")
    assert model.base_model.applied_edit_ids == []
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


def test_raw_errors_became_clear_ones():
    model = get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en", "fr"], edit_lr_init=1e-3))
    batch = make_batch("masked_lm")
    with pytest.raises(TypeError, match="language code or a list of codes"):
        model.edit(batch, language=0)
    wrong = {**batch, "labels": batch["labels"].clone()}
    wrong["labels"][0, 3] = 10**6
    with pytest.raises(ValueError, match="outside the model's 64 outputs"):
        model.edit(wrong, language="en")
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        model.edit(batch, language="en")
    with pytest.raises(ValueError, match="reads at most 32"):
        model.edit(make_batch("masked_lm", seq_len=40), language="en")
    assert model.base_model.applied_edit_ids == []


def test_a_float64_base_model_edits():
    model = get_peft_model(build_model("bert-mlm").double(), LimeConfig(languages=["en", "fr"], edit_lr_init=1e-3))
    batch = make_batch("masked_lm")
    before = model(**batch).loss
    with model.edit(batch, language="en"):
        assert model(**batch).loss < before


def test_a_deeply_nested_config_is_refused(tmp_path):
    from hf_lime.editor_folder import load_adapter_config

    (tmp_path / "adapter_config.json").write_text('{"a":' * 5000 + "1" + "}" * 5000)
    with pytest.raises(ValueError, match="nests its JSON too deeply"):
        load_adapter_config(tmp_path)
