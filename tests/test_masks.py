"""Hard-concrete gates and language masks (DESIGN.md §2)."""

from __future__ import annotations

import torch

from hf_lime.masks import HardConcreteGate, LanguageMask, MaskBank


def test_gates_are_deterministic_in_eval_and_sampled_in_training():
    gate = HardConcreteGate(num_languages=2, width=50)
    ids = torch.tensor([0, 0, 1])
    gate.eval()
    assert torch.equal(gate(ids), gate(ids))
    gate.train()
    torch.manual_seed(0)
    a, b = gate(ids), gate(ids)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # one sample per token, even for the same language


def test_gates_lie_in_unit_interval_and_reach_both_ends():
    gate = HardConcreteGate(num_languages=1, width=2000).train()
    torch.manual_seed(0)
    z = gate(torch.zeros(4, dtype=torch.long))
    assert z.min() >= 0.0 and z.max() <= 1.0
    assert (z == 0.0).any() and (z == 1.0).any()  # stretched then clamped: exact zeros and ones occur


def test_initial_drop_rate_sets_expected_open_gates():
    for rate in (0.1, 0.5, 0.9):
        gate = HardConcreteGate(1, 4000, init_drop_rate=rate).train()
        torch.manual_seed(0)
        open_share = (gate(torch.zeros(8, dtype=torch.long)) > 0).float().mean().item()
        assert abs(open_share - gate.expected_l0().item()) < 0.02
    assert (
        HardConcreteGate(1, 4, init_drop_rate=0.9).expected_l0()
        < HardConcreteGate(1, 4, init_drop_rate=0.1).expected_l0()
    )


def test_l0_penalty_is_differentiable():
    """The reference code computed its L0 term from `.weight.data`; ours must reach the gate parameters."""
    mask = LanguageMask(num_languages=3, width=8)
    mask.l0_penalty().backward()
    assert mask.gate.log_alpha.grad is not None
    assert (mask.gate.log_alpha.grad > 0).all()  # lowering log_alpha lowers the expected L0


def test_l0_penalty_of_selected_languages_only_touches_their_rows():
    gate = HardConcreteGate(num_languages=3, width=4)
    gate.expected_l0(torch.tensor([1])).backward()
    grad = gate.log_alpha.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_log_alpha_is_clamped():
    gate = HardConcreteGate(num_languages=1, width=3).eval()
    with torch.no_grad():
        gate.log_alpha.fill_(1e6)
    assert torch.isfinite(gate.expected_l0())
    assert torch.equal(gate(torch.zeros(1, dtype=torch.long)), torch.ones(1, 3))


def test_mask_amplifies_and_never_removes():
    mask = LanguageMask(num_languages=2, width=16).eval()
    values = mask(torch.tensor([0, 1]))
    assert (values >= 1.0).all() and (values <= 2.0).all()
    plain = LanguageMask(num_languages=2, width=4, use_l0=False)
    assert torch.equal(plain(torch.tensor([1])), torch.full((1, 4), 2.0))
    assert plain.l0_penalty() == 0


def test_mask_bank_splits_input_and_gradient_parts():
    bank = MaskBank({"a": 5 + 3}, num_languages=2).eval()
    x_part, d_part = bank.split("a", torch.tensor([0, 1, 1]), d_in=5)
    assert x_part.shape == (3, 5) and d_part.shape == (3, 3)
    assert bank.split("missing", torch.tensor([0]), d_in=5) is None
    assert not MaskBank({}, num_languages=2).enabled
