"""Vocabulary logits at the target positions only: same losses, gradients and predictions as full logits."""

import pytest
import torch
from conftest import FAMILIES, build_model, make_batch
from peft import get_peft_model

from hf_lime import LimeConfig
from hf_lime.data.encoding import predict_from_logits
from hf_lime.head import target_logits, target_positions
from hf_lime.trainer.episode import retain_agreement, retain_kl
from hf_lime.tuner.context import capture_layer_grads


def _ragged_batch(task: str) -> dict:
    batch = make_batch(task, batch_size=3, seq_len=10, seed=2)
    if task == "masked_lm":
        batch["labels"][1, 6] = 9  # rows with different numbers of target tokens
    elif task == "causal_lm":
        batch["labels"][0, -3] = batch["input_ids"][0, -3]
    if task != "seq_cls":
        batch["attention_mask"][2, :2] = 0
    return batch


def _without_labels(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_and_gradients_match_the_models_own_loss(family):
    task = FAMILIES[family].task
    model = build_model(family)
    batch = _ragged_batch(task)
    reference = model(**batch).loss
    ref_grads = torch.autograd.grad(reference, list(model.parameters()), allow_unused=True)
    scored = target_logits(model, batch, task)
    grads = torch.autograd.grad(scored.loss(), list(model.parameters()), allow_unused=True)
    assert torch.allclose(scored.loss(), reference, atol=1e-6)
    for param, ref, got in zip(model.parameters(), ref_grads, grads, strict=True):
        zeros = torch.zeros_like(param)
        assert torch.allclose(zeros if ref is None else ref, zeros if got is None else got, atol=1e-6)


@pytest.mark.parametrize("family", ["bert-mlm", "xlmr-mlm", "gpt2", "llama"])
def test_the_head_only_sees_the_target_positions(family):
    task = FAMILIES[family].task
    model = build_model(family)
    batch = _ragged_batch(task)
    shapes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        scored = target_logits(model, batch, task)
    handle.remove()
    n_targets = int((batch["labels"] != -100).sum())
    assert shapes == [(n_targets, model.config.vocab_size)]
    assert scored.counts == [int((row != -100).sum()) for row in batch["labels"]]
    with torch.no_grad():
        full = model(**_without_labels(batch)).logits
    assert scored.predictions() == predict_from_logits(task, full, batch)
    gold = [row[row != -100].tolist() for row in batch["labels"]]
    assert scored.row_correct() == [p == g for p, g in zip(scored.predictions(), gold, strict=True)]


def test_causal_positions_are_shifted_and_position_zero_is_refused():
    labels = torch.tensor([[-100, -100, 5, 6]])
    assert target_positions("causal_lm", labels).tolist() == [[False, True, True, False]]
    assert target_positions("masked_lm", labels).tolist() == [[False, False, True, True]]
    with pytest.raises(ValueError, match="position 0"):
        target_positions("causal_lm", torch.tensor([[5, -100]]))
    with pytest.raises(ValueError, match="allowed tasks"):
        target_logits(build_model("bert-mlm"), _ragged_batch("masked_lm"), "token_cls")


def test_a_peft_wrapped_model_is_sliced_too():
    model = get_peft_model(build_model("xlmr-mlm"), LimeConfig(languages=["en"], use_lime_mask=False))
    batch = _ragged_batch("masked_lm")
    with torch.no_grad():
        scored = target_logits(model, batch, "masked_lm")
        reference = model(**batch).loss
    assert scored.logits.dim() == 2 and torch.allclose(scored.loss(), reference, atol=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_captured_edit_gradients_do_not_depend_on_the_sliced_head(family):
    task = FAMILIES[family].task
    model = get_peft_model(build_model(family), LimeConfig(languages=["en"], use_lime_mask=False))
    tuner, batch = model.base_model, _ragged_batch(task)
    full = capture_layer_grads(tuner.model, tuner.lime_layers, batch, None, task=None)
    sliced = capture_layer_grads(tuner.model, tuner.lime_layers, batch, None, task=task)
    assert full.loss == pytest.approx(sliced.loss, abs=1e-6)
    for key in full.grads:
        assert torch.allclose(full.inputs[key], sliced.inputs[key])
        assert torch.allclose(full.grads[key], sliced.grads[key], atol=1e-7)


def test_retain_kl_is_zero_for_identical_logits_and_agreement_counts_rows():
    model, batch = build_model("bert-mlm"), _ragged_batch("masked_lm")
    with torch.no_grad():
        base = target_logits(model, batch, "masked_lm")
    assert retain_kl(base, base).item() == pytest.approx(0.0, abs=1e-7)
    assert retain_agreement(base, base) == 1.0
    shifted = type(base)(logits=base.logits.clone(), targets=base.targets, counts=base.counts)
    shifted.logits[0] = shifted.logits[0].roll(1)  # row 0's only target token now predicts something else
    assert retain_kl(base, shifted).item() > 0
    assert retain_agreement(base, shifted) == pytest.approx(2 / 3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_concatenated_batches_give_each_rows_own_logits(family):
    """The episode scores update and retain rows in one forward: right padding changes no row's target logits."""
    from hf_lime.data.encoding import concat_batches

    task = FAMILIES[family].task
    model = build_model(family)
    short = make_batch(task, batch_size=2, seq_len=6, seed=1)
    long = make_batch(task, batch_size=3, seq_len=9, seed=2, target=9)
    with torch.no_grad():
        both = target_logits(model, concat_batches([short, long]), task)
        first, second = both.split_rows(2)
        for part, batch in ((first, short), (second, long)):
            alone = target_logits(model, batch, task)
            torch.testing.assert_close(part.logits, alone.logits, rtol=1e-4, atol=1e-5)
            assert torch.equal(part.targets, alone.targets) and part.counts == alone.counts


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f].task != "seq_cls"])
def test_logits_surely_finite_agrees_with_the_logits_and_skips_the_vocabulary_product(family, monkeypatch):
    """True on a normal model without computing a logit; False when a hidden state is not finite; None (undecided)
    when the bound is too large; the cached row norm follows an in-place change of the weight."""
    from hf_lime import head as head_module

    task = FAMILIES[family].task
    model = build_model(family)
    batch = _ragged_batch(task)
    keep = target_positions(task, batch["labels"])
    output = model.get_output_embeddings()
    products = []
    real_linear = torch.nn.functional.linear

    def linear(x, weight, bias=None):
        products.append(weight is output.weight)
        return real_linear(x, weight, bias)

    with torch.no_grad():
        monkeypatch.setattr(torch.nn.functional, "linear", linear)
        assert head_module.logits_surely_finite(model, _without_labels(batch), keep) is True
        assert not any(products)  # no vocabulary product (GPT-2's own layers are Conv1D: no F.linear at all)
        entry = head_module._SIZES[id(output.weight)]
        assert head_module.logits_surely_finite(model, _without_labels(batch), keep) is True
        assert head_module._SIZES[id(output.weight)] is entry  # the sizes are computed once, not per call
        monkeypatch.setattr(torch.nn.functional, "linear", real_linear)
        assert bool(torch.isfinite(model(**_without_labels(batch)).logits).all())
        with torch.no_grad():
            output.weight[3] *= 1e38  # in place: the cached largest row norm must follow
        assert head_module.logits_surely_finite(model, _without_labels(batch), keep) is None
        output.weight[3] /= 1e38
        assert head_module.logits_surely_finite(model, _without_labels(batch), keep) is True
        layer = output.weight  # a non-finite hidden state: the final norm's output made NaN by its input
        monkeypatch.setattr(head_module, "hidden_at", lambda *_: torch.full((2, layer.shape[1]), float("nan")))
        assert head_module.logits_surely_finite(model, _without_labels(batch), keep) is False
