"""The vocabulary product at the target positions in the faster form for the CPU: same values and gradients as
`F.linear`, a choice made once per row count, the plain form kept on near ties, untouched where not tuned."""

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, build_model, make_batch

import hf_lime.head_product as hp
from hf_lime.head import logits_at, target_logits, target_positions
from hf_lime.head_product import BACKWARDS, FORWARDS, chosen_forms, head_product, reset_choices


@pytest.fixture(autouse=True)
def _fresh_choices():
    reset_choices()
    yield
    reset_choices()


@pytest.fixture
def tune_small(monkeypatch):
    """Tune products with small weights too (the real threshold needs a 64 MB matrix)."""
    monkeypatch.setattr(hp, "MIN_ELEMENTS", 0)


def _operands(rows: int, vocab: int = 50, hidden: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=gen)
    return h, torch.randn(vocab, hidden, generator=gen), torch.randn(vocab, generator=gen)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("form", list(FORWARDS))
def test_every_forward_form_gives_the_linear_logits(form, rows):
    h, weight, bias = _operands(rows)
    expected = F.linear(h, weight, bias)
    out = FORWARDS[form](h, weight, bias)
    assert out.is_contiguous() and out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(FORWARDS[form](h, weight, None), F.linear(h, weight))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("form", list(BACKWARDS))
def test_every_backward_form_gives_the_gradient_of_the_hidden_states(form, rows):
    _, weight, _ = _operands(rows)  # vocab × hidden
    grad = torch.randn(rows, weight.shape[0])  # the logits' gradient
    torch.testing.assert_close(BACKWARDS[form](grad, weight), grad @ weight)


@pytest.mark.parametrize("rows", [1, 2, 3, 6])
def test_values_and_all_three_gradients_match_linear(tune_small, rows):
    h, weight, bias = _operands(rows)
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias)]
    reference = [t.clone().requires_grad_() for t in (h, weight, bias)]
    upstream = torch.randn(rows, weight.shape[0])
    out = head_product(*leaves)
    expected = F.linear(*reference)
    torch.testing.assert_close(out, expected)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for got, want in zip(leaves, reference, strict=True):
        torch.testing.assert_close(got.grad, want.grad)
    assert {key[0] for key in chosen_forms()} == {"forward", "backward"}


@pytest.mark.parametrize("live", [[0], [1, 4], [], [0, 1, 2, 3, 4]])
def test_rows_outside_the_loss_are_skipped_in_the_backward(tune_small, monkeypatch, live):
    """Rows whose logits get no gradient (passengers of a capture) give exact zeros and are not multiplied."""
    h, weight, bias = _operands(5)
    upstream = torch.zeros(5, weight.shape[0])
    upstream[live] = torch.randn(len(live), weight.shape[0])
    seen = []
    monkeypatch.setitem(hp.BACKWARDS, "plain", lambda grad, w: seen.append(grad.shape[0]) or grad @ w)
    leaf, reference = h.clone().requires_grad_(), h.clone().requires_grad_()
    (head_product(leaf, weight, bias) * upstream).sum().backward()
    (F.linear(reference, weight, bias) * upstream).sum().backward()
    torch.testing.assert_close(leaf.grad, reference.grad)
    assert set(seen) <= {len(live)} and (len(seen) > 0) == (len(live) > 0)
    dead = [row for row in range(5) if row not in live]
    assert torch.equal(leaf.grad[dead], torch.zeros(len(dead), h.shape[1]))


def test_low_precision_products_are_close_and_only_for_a_frozen_weight(tune_small):
    h, weight, bias = _operands(4, vocab=300, hidden=32)
    leaf = h.clone().requires_grad_()
    expected = F.linear(h, weight, bias)
    with hp.low_precision(torch.bfloat16):
        out = head_product(leaf, weight, bias)
        trainable = head_product(h, weight.clone().requires_grad_(), bias)
    assert out.dtype == torch.float32 and not torch.equal(out, expected)
    torch.testing.assert_close(out, expected, atol=0.15, rtol=0.02)
    torch.testing.assert_close(trainable, expected)  # a weight that trains keeps the float32 product
    upstream = torch.zeros_like(out)
    upstream[1:3] = torch.randn(2, out.shape[1])
    (out * upstream).sum().backward()  # after the block: the forward's choice holds
    torch.testing.assert_close(leaf.grad, upstream @ weight, atol=0.3, rtol=0.02)
    assert torch.equal(leaf.grad[[0, 3]], torch.zeros(2, h.shape[1]))
    assert len(hp._COPIES) == 1
    with pytest.raises(ValueError, match="bfloat16 or None"), hp.low_precision(torch.float16):
        pass
    assert isinstance(hp.fast_bfloat16(), bool)


def test_a_double_backward_goes_through(tune_small):
    h, weight, bias = _operands(3)
    h.requires_grad_()
    (grad_h,) = torch.autograd.grad(head_product(h, weight, bias).pow(2).sum(), h, create_graph=True)
    (second,) = torch.autograd.grad(grad_h.sum(), h)
    (reference,) = torch.autograd.grad(
        torch.autograd.grad(F.linear(h, weight, bias).pow(2).sum(), h, create_graph=True)[0].sum(), h
    )
    torch.testing.assert_close(second, reference)


def _fake_clock(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """`_timed` reporting fixed times per form (by function name); returns the log of timed calls."""
    calls = []

    def timed(fn, *args):
        calls.append(fn.__name__)
        return seconds[fn.__name__], fn(*args)

    monkeypatch.setattr(hp, "_timed", timed)
    return calls


def test_the_choice_is_made_once_per_row_count_and_reused(tune_small, monkeypatch):
    calls = _fake_clock(monkeypatch, {"_linear": 2.0, "_wide": 1.0})
    h, weight, bias = _operands(2)
    first = head_product(h, weight, bias)
    assert calls == ["_linear", "_wide"] * hp.ROUNDS
    again = head_product(h, weight, bias)
    assert calls == ["_linear", "_wide"] * hp.ROUNDS  # not timed again
    torch.testing.assert_close(first, again)
    key = ("forward", 2, tuple(weight.shape), weight.dtype, torch.get_num_threads())
    assert chosen_forms()[key] == "wide"
    head_product(*_operands(3)[:1], weight, bias)  # a new row count is timed on its own
    assert len(calls) == 4 * hp.ROUNDS
    head_product(*_operands(6)[:1], weight, bias)  # 5-8 rows share one choice: timed once for the class
    head_product(*_operands(8)[:1], weight, bias)
    assert len(calls) == 6 * hp.ROUNDS and ("forward", 8, tuple(weight.shape)) == tuple(list(chosen_forms())[-1][:3])
    reset_choices()
    assert chosen_forms() == {}


@pytest.mark.parametrize(
    ("linear_seconds", "wide_seconds", "chosen"),
    [(1.0, 1.0 / (hp.MARGIN * 1.01), "wide"), (1.0, 1.0 / (hp.MARGIN * 0.99), "linear"), (1.0, 1.5, "linear")],
)
def test_an_alternative_needs_to_win_by_the_margin(tune_small, monkeypatch, linear_seconds, wide_seconds, chosen):
    _fake_clock(
        monkeypatch, {"_linear": linear_seconds, "_wide": wide_seconds, "_grad_plain": 1.0, "_grad_padded": 2.0}
    )
    h, weight, bias = _operands(4)
    head_product(h, weight, bias)
    assert set(chosen_forms().values()) == {chosen}


def test_small_weights_long_batches_and_3d_inputs_are_plain_linear(monkeypatch):
    h, weight, bias = _operands(2)
    torch.testing.assert_close(head_product(h, weight, bias), F.linear(h, weight, bias))
    assert chosen_forms() == {}  # below MIN_ELEMENTS
    monkeypatch.setattr(hp, "MIN_ELEMENTS", 0)
    long_h, _, _ = _operands(hp.MAX_ROWS + 1)
    head_product(long_h, weight, bias)
    head_product(h[None], weight, bias)
    assert chosen_forms() == {}
    assert hp.tuned(weight, hp.MAX_ROWS) and not hp.tuned(weight, 0)


@pytest.mark.parametrize("family", ["bert-mlm", "xlmr-mlm", "gpt2", "llama"])
def test_target_logits_are_the_same_with_the_tuned_head(family, monkeypatch):
    task = FAMILIES[family].task
    model = build_model(family)
    batch = make_batch(task, batch_size=3, seq_len=10, seed=2)
    plain = target_logits(model, batch, task)
    plain_grads = torch.autograd.grad(plain.loss(), [p for p in model.parameters() if p.requires_grad])
    monkeypatch.setattr(hp, "MIN_ELEMENTS", 0)
    tuned = target_logits(model, batch, task)
    tuned_grads = torch.autograd.grad(tuned.loss(), [p for p in model.parameters() if p.requires_grad])
    assert chosen_forms(), "the tuned product was not used"
    torch.testing.assert_close(tuned.logits, plain.logits)
    for got, want in zip(tuned_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert "forward" not in model.get_output_embeddings().__dict__  # the head is left as it was


def test_a_vocabulary_subset_inside_the_tuned_head_is_undone_in_order(tune_small):
    model = build_model("bert-mlm")
    batch = make_batch("masked_lm", batch_size=2, seq_len=8, seed=1)
    keep = target_positions("masked_lm", batch["labels"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    vocab = torch.tensor([3, 7, 11])
    with torch.no_grad():
        subset = logits_at(model, inputs, keep, vocab)
        full = logits_at(model, inputs, keep)
    assert subset.shape == (int(keep.sum()), 3)
    torch.testing.assert_close(subset, full[:, vocab])
    assert "forward" not in model.get_output_embeddings().__dict__
