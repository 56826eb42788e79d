"""The checked bfloat16 argmax (`hf_lime.fast_argmax`): the same ids as the float32 product, on hard cases too."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from hf_lime import LimeConfig, fast_argmax, head_product


@pytest.fixture(autouse=True)
def _fresh():
    fast_argmax.reset()
    yield
    fast_argmax.reset()


def _plain_ids(h, weight, bias):
    return F.linear(h, weight, bias).argmax(dim=-1)


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_checked_route_matches_float32_on_random_rows(scale):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5000, 48, generator=g)
    bias = torch.randn(5000, generator=g)
    bias[:100] = -100.0  # tokens a head masks out, as the fact model's bias does
    h = torch.randn(70, 48, generator=g) * scale
    assert torch.equal(fast_argmax._checked(h, weight, bias), _plain_ids(h, weight, bias))
    assert torch.equal(fast_argmax._checked(h, weight, None), _plain_ids(h, weight, None))


@pytest.mark.parametrize("vocab", [4096, 4100, 700])
def test_block_scan_finds_every_token_the_full_compare_finds(vocab, monkeypatch):
    monkeypatch.setattr(fast_argmax, "BLOCK", 256)  # several blocks, a short last one where vocab % 256 != 0
    g = torch.Generator().manual_seed(3)
    approx = torch.randn(9, vocab, generator=g).to(torch.bfloat16)
    approx[0, -1] = approx[1, 0] = approx[2, 255] = approx[2, 256] = 50.0  # maxima on block edges and at the end
    approx[3, :] = 1.0  # a row of ties: every token is close
    maxima = fast_argmax._block_maxima(approx)
    assert torch.equal(maxima.amax(dim=1), approx.amax(dim=1))
    floor = (maxima.amax(dim=1).float() - torch.linspace(0.0, 3.0, 9)).to(torch.bfloat16)
    rows, ids = fast_argmax._close_ids(approx, floor, maxima)
    expected = set(map(tuple, (approx >= floor[:, None]).nonzero().tolist()))
    assert set(map(tuple, torch.stack([rows, ids], dim=1).tolist())) == expected


def test_checked_route_separates_near_ties_that_bfloat16_cannot():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(3000, 32, generator=g)
    h = torch.randn(6, 32, generator=g) * 5
    for row in range(6):  # give two far-apart tokens logits 1e-4 apart, above every other token
        direction = h[row] / h[row].norm() ** 2
        low, high = 10 + row, 2900 - row
        weight[low] = direction * 200.0
        weight[high] = direction * 200.01  # float32 tells them apart; bfloat16 rounds both to the same value
    weight_low = weight.to(torch.bfloat16)
    rounded = F.linear(h.to(torch.bfloat16), weight_low).float()
    assert bool((rounded[:, 10] == rounded[:, 2900]).any())  # the case is hard for bfloat16 alone
    expected = _plain_ids(h, weight, None)
    assert torch.equal(fast_argmax._checked(h, weight, None), expected)
    assert expected.tolist() == [2900 - row for row in range(6)]


def test_argmax_product_times_both_routes_once_per_row_bucket_and_agrees():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(65536, 256, generator=g)  # at MIN_ELEMENTS: the routes are timed
    bias = torch.randn(65536, generator=g)
    for rows in (3, 4, 20):
        h = torch.randn(rows, 256, generator=g) * 3
        assert torch.equal(fast_argmax.argmax_product(h, weight, bias), _plain_ids(h, weight, bias))
        assert torch.equal(fast_argmax.argmax_product(h, weight, bias), _plain_ids(h, weight, bias))
    routes = fast_argmax.chosen_routes()
    threads = torch.get_num_threads()
    assert set(routes) == {(4, (65536, 256), threads), (32, (65536, 256), threads)}
    assert set(routes.values()) <= {"plain", "checked"}


def test_small_or_non_float32_products_take_the_plain_route():
    weight = torch.randn(100, 8)
    h = torch.randn(3, 8)
    assert not fast_argmax.applies(h, weight)
    assert not fast_argmax.applies(h.double(), weight.double())
    assert torch.equal(fast_argmax.argmax_product(h, weight), _plain_ids(h, weight, None))
    assert fast_argmax.chosen_routes() == {}


def test_the_bfloat16_copy_follows_in_place_changes_of_the_weight():
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(4000, 16, generator=g), torch.zeros(4000)
    h = torch.randn(5, 16, generator=g)
    before = fast_argmax._checked(h, weight, bias)
    with torch.no_grad():
        weight[7] = h[0] * 100  # token 7 now wins row 0
        bias[8] = 1e4  # and token 8 every row
    after = fast_argmax._checked(h, weight, bias)
    assert torch.equal(after, _plain_ids(h, weight, bias)) and not torch.equal(before, after)
    assert after.tolist() == [8] * 5


@pytest.mark.parametrize("family", ["bert-mlm", "xlmr-mlm", "gpt2", "llama"])
def test_scorers_read_the_same_answers_through_the_checked_route(family, monkeypatch):
    from conftest import FAMILIES, build_model, make_batch

    from hf_lime.evaluation.scoring import TargetScorer
    from hf_lime.head import target_logits

    monkeypatch.setattr(fast_argmax, "MIN_ELEMENTS", 0)  # tiny heads qualify
    monkeypatch.setitem(fast_argmax.FORMS, "plain", fast_argmax._checked)  # whichever route wins, it is the checked
    task = FAMILIES[family].task
    model = get_peft_model(build_model(family), LimeConfig(languages=["en"], use_lime_mask=False))
    batch = make_batch(task, batch_size=4, seq_len=10, seed=1)
    expected = target_logits(model, batch, task).predictions()
    scorer = TargetScorer(model, None, task, None, max_length=32, batch_size=8)
    assert scorer._predict_batch(batch) == expected
    assert len(head_product._COPIES) == 1  # the checked route ran


def test_plain_products_turns_the_checked_route_off_inside_the_block():
    g = torch.Generator().manual_seed(4)
    weight, h = torch.randn(65536, 256, generator=g), torch.randn(5, 256, generator=g)
    with fast_argmax.plain_products():
        assert torch.equal(fast_argmax.argmax_product(h, weight), _plain_ids(h, weight, None))
    assert fast_argmax.chosen_routes() == {} and head_product._COPIES == {}
    fast_argmax.argmax_product(h, weight)
    assert len(fast_argmax.chosen_routes()) == 1


def test_many_rows_are_read_a_bounded_number_at_a_time(monkeypatch):
    monkeypatch.setattr(fast_argmax, "MAX_ROWS", 8)
    monkeypatch.setattr(fast_argmax, "MIN_ELEMENTS", 0)
    seen = []
    real = fast_argmax._plain

    def plain(h, weight, bias):
        seen.append(h.shape[0])
        return real(h, weight, bias)

    monkeypatch.setitem(fast_argmax.FORMS, "plain", plain)
    g = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(300, 16, generator=g), torch.randn(300, generator=g)
    h = torch.randn(20, 16, generator=g)
    assert torch.equal(fast_argmax.argmax_product(h, weight, bias), _plain_ids(h, weight, bias))
    assert seen and max(seen) <= 8  # 20 rows: 8 + 8 + 4, never all at once
    assert {key[0] for key in fast_argmax.chosen_routes()} <= {4, 8}
